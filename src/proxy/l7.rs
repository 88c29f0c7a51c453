//! L7 inspection building blocks for requests the proxy terminates: the canonical request
//! path that policy judges and upstream receives, and the JSON deny answers.

pub mod path;
