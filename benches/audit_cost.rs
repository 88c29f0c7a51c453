//! A fixed workload for counting instructions (issue 17): `requests` keep-alive
//! absolute-form GETs through the proxy on one thread, with (`ocsf`) or without (`plain`)
//! every audit event written as an OCSF JSON line to `/dev/null`. Under callgrind two runs
//! per mode (say 1000 and 2000 requests) give the instructions of one GET, setup subtracted:
//!
//! ```sh
//! cargo bench --bench audit_cost --no-run
//! for mode in plain ocsf; do for n in 1000 2000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$mode.$n target/release/deps/audit_cost-* $mode $n
//! done; done
//! ```
//!
//! Run by `cargo bench` or `cargo test`, it does 200 plain GETs and prints the time.

#[path = "proxy/common.rs"]
mod common;
#[path = "proxy/https.rs"]
#[allow(dead_code)]
mod https;

use std::time::Instant;

use common::{client, get, http_server, start_proxy};
use openshell_sandbox::telemetry::ocsf;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let with_ocsf = args.first().is_some_and(|mode| mode == "ocsf");
    let requests: u32 = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(200);
    if with_ocsf {
        let identity = ocsf::Identity::new("proxy", Some("bench".into()), None);
        ocsf::install(identity, vec![ocsf::Output::File("/dev/null".into())]).unwrap();
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let upstream_ca = https::ca();
    let elapsed = rt.block_on(async {
        let web = http_server().await;
        let proxy = start_proxy(dir.path(), &[web.port()], 1, &upstream_ca.pem, false).await;
        let (host, absolute) = (web.to_string(), format!("http://{web}/"));
        let mut sender = client(proxy).await;
        let started = Instant::now();
        for _ in 0..requests {
            get(&mut sender, &absolute, &host).await;
        }
        started.elapsed()
    });
    let mode = if with_ocsf { "ocsf" } else { "plain" };
    println!("{requests} keep-alive GETs through the proxy ({mode}): {elapsed:?}");
}
