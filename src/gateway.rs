//! The OpenShell gateway's gRPC interface (gateway-contract.md): client, policy and
//! credential sources, log shipping, and the supervisor session with its relays.
