use std::cell::RefCell;

use hickory_proto::op::Query;

use super::*;

/// `api.example.com` is allowed at 198.18.0.7; `full.example.com` is allowed but the table
/// is full; everything else is denied. Records every lookup.
#[derive(Default)]
struct FakeZone {
    asked: RefCell<Vec<(String, bool)>>,
}

const ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 7);

impl Zone for FakeZone {
    fn lookup(&self, name: &str, address: bool) -> Lookup {
        self.asked.borrow_mut().push((name.to_owned(), address));
        match (name, address) {
            ("api.example.com", true) => Lookup::Address(ADDR),
            ("api.example.com" | "full.example.com", false) => Lookup::Allowed,
            ("full.example.com", true) => Lookup::Unavailable,
            _ => Lookup::Denied,
        }
    }

    fn reverse(&self, addr: Ipv4Addr) -> Option<Arc<str>> {
        (addr == ADDR).then(|| "api.example.com".into())
    }
}

fn query(name: &str, qtype: RecordType) -> Message {
    let mut q = Message::query();
    q.metadata.id = 0x4242;
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    q
}

fn ask(q: &Message, zone: &FakeZone) -> Message {
    let bytes = respond(&q.to_vec().unwrap(), Transport::Udp, zone).expect("an answer");
    Message::from_vec(&bytes).unwrap()
}

#[test]
fn an_allowed_name_gets_its_synthetic_address_with_a_short_ttl() {
    let zone = FakeZone::default();
    let r = ask(&query("API.Example.com.", RecordType::A), &zone);
    assert_eq!(r.metadata.id, 0x4242);
    assert_eq!(r.metadata.message_type, MessageType::Response);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.metadata.authoritative && r.metadata.recursion_desired && !r.metadata.truncation);
    assert_eq!(r.queries[0].name().to_ascii(), "API.Example.com.", "the question as asked (0x20 case kept)");
    assert_eq!(r.answers.len(), 1);
    assert_eq!(r.answers[0].ttl, TTL_SECS);
    assert_eq!(r.answers[0].data, RData::A(A(ADDR)));
    assert_eq!(r.answers[0].name.to_ascii(), "API.Example.com.");
    assert_eq!(zone.asked.borrow().as_slice(), [("api.example.com".to_owned(), true)], "normalised for the zone");
    let any = ask(&query("api.example.com.", RecordType::ANY), &zone);
    assert_eq!(any.answers.len(), 1, "ANY is answered as A");
}

#[test]
fn aaaa_and_other_types_of_an_allowed_name_are_empty_answers() {
    let zone = FakeZone::default();
    for qtype in [RecordType::AAAA, RecordType::MX, RecordType::TXT, RecordType::HTTPS, RecordType::SRV] {
        let r = ask(&query("api.example.com.", qtype), &zone);
        assert_eq!((r.metadata.response_code, r.answers.len()), (ResponseCode::NoError, 0), "{qtype}");
    }
    assert!(zone.asked.borrow().iter().all(|(_, address)| !address), "no address is assigned for them");
}

#[test]
fn a_name_no_policy_allows_is_nxdomain_for_every_type() {
    let zone = FakeZone::default();
    for qtype in [RecordType::A, RecordType::AAAA, RecordType::TXT] {
        let r = ask(&query("denied.example.", qtype), &zone);
        assert_eq!((r.metadata.response_code, r.answers.len()), (ResponseCode::NXDomain, 0), "{qtype}");
    }
}

#[test]
fn a_full_table_is_servfail() {
    let r = ask(&query("full.example.com.", RecordType::A), &FakeZone::default());
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    let r = ask(&query("full.example.com.", RecordType::AAAA), &FakeZone::default());
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
}

#[test]
fn reverse_names_of_handed_out_addresses_only() {
    let zone = FakeZone::default();
    let r = ask(&query("7.0.18.198.in-addr.arpa.", RecordType::PTR), &zone);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(r.answers[0].data, RData::PTR(PTR(Name::from_ascii("api.example.com.").unwrap())));
    for other in ["8.0.18.198.in-addr.arpa.", "1.0.0.10.in-addr.arpa.", "x.in-addr.arpa.", "1.0.ip6.arpa."] {
        let r = ask(&query(other, RecordType::PTR), &zone);
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain, "{other}");
    }
    assert!(zone.asked.borrow().is_empty(), "reverse names are never policy lookups (nor audited)");
}

#[test]
fn ip_literals_and_the_root_are_not_names() {
    let zone = FakeZone::default();
    let r = ask(&query("10.0.0.5.", RecordType::A), &zone);
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    let r = ask(&query(".", RecordType::NS), &zone);
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    assert!(zone.asked.borrow().is_empty());
}

#[test]
fn malformed_queries_get_formerr_when_they_carry_an_id() {
    let zone = FakeZone::default();
    let mut bytes = query("api.example.com.", RecordType::A).to_vec().unwrap();
    bytes.truncate(bytes.len() - 3);
    let r = Message::from_vec(&respond(&bytes, Transport::Udp, &zone).unwrap()).unwrap();
    assert_eq!((r.metadata.id, r.metadata.response_code), (0x4242, ResponseCode::FormErr));
    // Garbage after a valid header, a header claiming 9 questions and none present.
    let mut header = vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x09, 0, 0, 0, 0, 0, 0];
    let r = Message::from_vec(&respond(&header, Transport::Tcp, &zone).unwrap()).unwrap();
    assert_eq!((r.metadata.id, r.metadata.response_code), (0x1234, ResponseCode::FormErr));
    header.extend_from_slice(&[0xff; 40]);
    assert!(respond(&header, Transport::Udp, &zone).is_some());
    assert_eq!(respond(&[1, 2, 3], Transport::Udp, &zone), None, "no id: nothing to answer");
    assert_eq!(respond(&[], Transport::Udp, &zone), None);
    assert!(zone.asked.borrow().is_empty());
}

#[test]
fn responses_and_other_opcodes_classes_and_counts() {
    let zone = FakeZone::default();
    let mut response = query("api.example.com.", RecordType::A);
    response.metadata.message_type = MessageType::Response;
    assert_eq!(respond(&response.to_vec().unwrap(), Transport::Udp, &zone), None, "a response is never answered");
    let mut two = query("api.example.com.", RecordType::A);
    two.add_query(Query::query(Name::from_ascii("x.example.").unwrap(), RecordType::A));
    assert_eq!(ask(&two, &zone).metadata.response_code, ResponseCode::FormErr);
    let mut chaos = query("version.bind.", RecordType::TXT);
    chaos.queries[0].set_query_class(DNSClass::CH);
    assert_eq!(ask(&chaos, &zone).metadata.response_code, ResponseCode::Refused);
    let mut status = query("api.example.com.", RecordType::A);
    status.metadata.op_code = OpCode::Status;
    assert_eq!(ask(&status, &zone).metadata.response_code, ResponseCode::NotImp);
    let mut none = query("api.example.com.", RecordType::A);
    none.queries.clear();
    assert_eq!(ask(&none, &zone).metadata.response_code, ResponseCode::FormErr);
    assert!(zone.asked.borrow().is_empty());
}

#[test]
fn edns_is_answered_with_our_payload() {
    let zone = FakeZone::default();
    let mut q = query("api.example.com.", RecordType::A);
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    q.set_edns(edns);
    let r = ask(&q, &zone);
    assert_eq!(r.edns.map(|e| e.max_payload()), Some(EDNS_PAYLOAD));
    assert!(ask(&query("api.example.com.", RecordType::A), &zone).edns.is_none(), "no EDNS asked, none sent");
}

#[test]
fn an_answer_longer_than_the_limit_is_truncated_to_its_question() {
    let zone = FakeZone::default();
    let q = query("api.example.com.", RecordType::A);
    let response = answer(&q, &zone);
    let whole = response.to_vec().unwrap();
    assert_eq!(fit(response.clone(), whole.clone(), whole.len()), Some(whole.clone()), "it fits exactly");
    let cut = fit(response.clone(), whole.clone(), whole.len() - 1).unwrap();
    let r = Message::from_vec(&cut).unwrap();
    assert!(r.metadata.truncation && r.answers.is_empty() && r.queries.len() == 1, "{r:?}");
    assert_eq!(r.metadata.id, 0x4242);
    assert_eq!(fit(response, whole, 12), None, "not even the question fits: nothing is sent");
}

#[test]
fn the_longest_name_fits_a_classic_udp_answer() {
    let label = "a".repeat(63);
    let name = format!("{label}.{label}.{label}.{}.", "b".repeat(61));
    assert_eq!(name.len(), 254);
    struct Everything;
    impl Zone for Everything {
        fn lookup(&self, _: &str, _: bool) -> Lookup {
            Lookup::Address(ADDR)
        }
        fn reverse(&self, _: Ipv4Addr) -> Option<Arc<str>> {
            None
        }
    }
    let bytes = respond(&query(&name, RecordType::A).to_vec().unwrap(), Transport::Udp, &Everything).unwrap();
    let r = Message::from_vec(&bytes).unwrap();
    assert!(bytes.len() <= CLASSIC_UDP && !r.metadata.truncation && r.answers.len() == 1, "{} bytes", bytes.len());
}
