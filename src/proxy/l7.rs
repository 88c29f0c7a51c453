//! L7 inspection for connections the proxy terminates: the canonical request path that
//! policy judges and upstream receives, the checks of the request head (host, upgrades),
//! the judgement of one request, the inspected session that forwards it, the JSON deny
//! answers, and `inference.local` (request shaping, its session, and the local routes file).

pub mod deny;
pub mod head;
pub mod inference;
pub mod judge;
pub mod path;
pub mod routes;
pub mod session;
