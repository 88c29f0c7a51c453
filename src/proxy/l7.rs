//! L7 inspection building blocks for requests the proxy terminates: the canonical request
//! path that policy judges and upstream receives, the JSON deny answers, and the local
//! inference routes file.

pub mod deny;
pub mod judge;
pub mod path;
pub mod routes;
