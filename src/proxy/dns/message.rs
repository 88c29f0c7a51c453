//! One DNS answer, parsed and built with hickory-proto (no wire code here): a query for an
//! allowed name gets its synthetic IPv4 address (`A`, and `ANY` answered as `A`), every
//! other type of that name an empty answer (NODATA: `AAAA` too, so clients use IPv4); a
//! name no policy allows gets NXDOMAIN; reverse names of handed-out addresses get their
//! name (`PTR`). Malformed queries get FORMERR when they carry an id, UDP answers larger
//! than the client takes are truncated (TC set, answers dropped).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use crate::policy::host::normalize_destination;

/// The TTL of every answer: short, so a policy change reaches clients that cache.
pub const TTL_SECS: u32 = 5;
/// The UDP payload this server accepts and advertises (EDNS), as DNS flag day 2020 advises.
pub const EDNS_PAYLOAD: u16 = 1232;
/// The largest UDP answer for a client without EDNS.
pub const CLASSIC_UDP: usize = 512;

/// What the zone says about one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Allowed: this is its synthetic address.
    Address(Ipv4Addr),
    /// Allowed; no address was asked for (a query of another type).
    Allowed,
    /// No policy allows the name.
    Denied,
    /// Allowed, but no address can be handed out now (the table is full).
    Unavailable,
}

/// The names the server answers for.
pub trait Zone {
    /// The answer for `name` (normalised); `address` when an `A` record is wanted.
    fn lookup(&self, name: &str, address: bool) -> Lookup;
    /// The name a synthetic address was handed out for.
    fn reverse(&self, addr: Ipv4Addr) -> Option<Arc<str>>;
}

/// How the query arrived: UDP answers are bounded by what the client takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Datagrams: answers longer than the client's limit are truncated.
    Udp,
    /// A stream: answers up to 65535 bytes.
    Tcp,
}

/// The answer to the query `bytes`, or `None` when nothing should be sent (not a query, or
/// too short to carry an id).
pub fn respond(bytes: &[u8], transport: Transport, zone: &impl Zone) -> Option<Vec<u8>> {
    let query = match Message::from_vec(bytes) {
        Ok(query) => query,
        Err(_) => {
            let header = Header::read(&mut BinDecoder::new(bytes)).ok()?;
            if header.metadata.message_type != MessageType::Query {
                return None;
            }
            let error = Message::error_msg(header.metadata.id, header.metadata.op_code, ResponseCode::FormErr);
            return error.to_vec().ok();
        }
    };
    if query.metadata.message_type != MessageType::Query {
        return None;
    }
    let response = answer(&query, zone);
    let encoded = response.to_vec().ok()?;
    let limit = match transport {
        Transport::Tcp => usize::from(u16::MAX),
        Transport::Udp => {
            query.edns.as_ref().map_or(CLASSIC_UDP, |e| usize::from(e.max_payload().min(EDNS_PAYLOAD)).max(CLASSIC_UDP))
        }
    };
    fit(response, encoded, limit)
}

/// `encoded` when it fits in `limit` bytes; else the truncated form (question kept, TC set).
pub fn fit(response: Message, encoded: Vec<u8>, limit: usize) -> Option<Vec<u8>> {
    if encoded.len() <= limit {
        return Some(encoded);
    }
    response.truncate().to_vec().ok().filter(|bytes| bytes.len() <= limit)
}

/// The response message for a parsed query.
fn answer(query: &Message, zone: &impl Zone) -> Message {
    let mut response = Message::response(query.metadata.id, query.metadata.op_code);
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.checking_disabled = query.metadata.checking_disabled;
    response.metadata.recursion_available = true;
    response.add_queries(query.queries.iter().cloned());
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        response.set_edns(edns);
    }
    response.metadata.response_code = match (query.metadata.op_code, query.queries.as_slice()) {
        (OpCode::Query, [question]) if question.query_class() == DNSClass::IN => {
            response.metadata.authoritative = true;
            let (code, records) = resolve(question.name(), question.query_type(), zone);
            response.add_answers(records);
            code
        }
        (OpCode::Query, [_]) => ResponseCode::Refused,
        (OpCode::Query, _) => ResponseCode::FormErr,
        _ => ResponseCode::NotImp,
    };
    response
}

/// The response code and answer records for one question.
fn resolve(name: &Name, qtype: RecordType, zone: &impl Zone) -> (ResponseCode, Vec<Record>) {
    let ascii = name.to_ascii();
    if ascii.to_ascii_lowercase().ends_with(".arpa.") {
        let found = match name.parse_arpa_name().map(|net| (net.addr(), net.prefix_len())) {
            Ok((IpAddr::V4(v4), 32)) => zone.reverse(v4),
            _ => None,
        };
        return match found.and_then(|host| Name::from_ascii(format!("{host}.")).ok()) {
            Some(host) if matches!(qtype, RecordType::PTR | RecordType::ANY) => {
                (ResponseCode::NoError, vec![Record::from_rdata(name.clone(), TTL_SECS, RData::PTR(PTR(host)))])
            }
            Some(_) => (ResponseCode::NoError, Vec::new()),
            None => (ResponseCode::NXDomain, Vec::new()),
        };
    }
    // The root, and names no host can have (`*`, spaces): never a host, never audited.
    let Some(normalized) = normalize_destination(&ascii).filter(|n| n.parse::<IpAddr>().is_err()) else {
        return (if name.is_root() { ResponseCode::Refused } else { ResponseCode::NXDomain }, Vec::new());
    };
    let wants_address = matches!(qtype, RecordType::A | RecordType::ANY);
    match zone.lookup(&normalized, wants_address) {
        Lookup::Address(addr) if wants_address => {
            (ResponseCode::NoError, vec![Record::from_rdata(name.clone(), TTL_SECS, RData::A(A(addr)))])
        }
        Lookup::Address(_) | Lookup::Allowed => (ResponseCode::NoError, Vec::new()),
        Lookup::Denied => (ResponseCode::NXDomain, Vec::new()),
        Lookup::Unavailable => (ResponseCode::ServFail, Vec::new()),
    }
}

#[cfg(test)]
mod tests;
