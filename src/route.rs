//! The routes of the synthetic range (docs/transparent.md), added over netlink: in the
//! proxy's namespace a `local` route (every address of the range is the proxy's own, so
//! the transparent listeners accept connections to them), in the agent's a route via the
//! proxy. Then the capability that needed is given up: `CAP_NET_ADMIN` by the proxy, every
//! capability by the agent's network holder (`openshell-sandbox agent-net`).

use std::net::Ipv4Addr;

use caps::{CapSet, Capability};
use ipnet::Ipv4Net;
use rtnetlink::RouteMessageBuilder;
use rtnetlink::packet_route::route::{RouteMessage, RouteScope, RouteType};

use crate::{Exit, ExitStatus};

/// The synthetic range the policy DNS hands out (RFC 2544's benchmarking range: no real
/// host has these addresses, and the proxy's SSRF rules never dial them).
pub fn synthetic_range() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(198, 18, 0, 0), 15).expect("a valid prefix")
}

/// The loopback interface's index: always 1 (the kernel's `LOOPBACK_IFINDEX`).
const LOOPBACK_INDEX: u32 = 1;
/// The kernel's `local` routing table (`RT_TABLE_LOCAL`).
const TABLE_LOCAL: u32 = 255;

/// A route could not be set, or a capability not dropped.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket to set the route for {range}: {source}")]
    Netlink {
        /// The synthetic range.
        range: Ipv4Net,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The kernel refused the route.
    #[error(
        "cannot add the route `{route}`: {reason}; the container needs CAP_NET_ADMIN for this step (podman run --cap-add NET_ADMIN, see docs/podman.md, step 6)"
    )]
    Add {
        /// The route, as `ip route` writes it.
        route: String,
        /// The kernel's answer.
        reason: String,
    },
    /// A capability could not be dropped.
    #[error("cannot drop {what} after the route was set: {reason}")]
    Drop {
        /// Which capabilities.
        what: &'static str,
        /// The error.
        reason: String,
    },
}

impl ExitStatus for RouteError {
    fn exit_status(&self) -> Exit {
        match self {
            RouteError::Add { .. } => Exit::Usage,
            RouteError::Netlink { .. } | RouteError::Drop { .. } => Exit::Internal,
        }
    }
}

/// `ip route replace local RANGE dev lo table local`: the proxy's namespace takes every
/// address of `range` as its own.
pub async fn add_local(range: Ipv4Net) -> Result<(), RouteError> {
    let message = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(range.network(), range.prefix_len())
        .kind(RouteType::Local)
        .scope(RouteScope::Host)
        .table_id(TABLE_LOCAL)
        .output_interface(LOOPBACK_INDEX)
        .build();
    add(range, message, format!("local {range} dev lo table local")).await
}

/// `ip route replace RANGE via VIA`: the agent's namespace reaches the range through the proxy.
pub async fn add_via(range: Ipv4Net, via: Ipv4Addr) -> Result<(), RouteError> {
    let message = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(range.network(), range.prefix_len())
        .gateway(via)
        .build();
    add(range, message, format!("{range} via {via}")).await
}

async fn add(range: Ipv4Net, message: RouteMessage, shown: String) -> Result<(), RouteError> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|source| RouteError::Netlink { range, source })?;
    let task = tokio::spawn(connection);
    let added = handle.route().add(message).replace().execute().await;
    task.abort();
    added.map_err(|e| RouteError::Add { route: shown.clone(), reason: e.to_string() })?;
    tracing::info!(route = %shown, "route for the synthetic range set");
    Ok(())
}

/// Gives up `CAP_NET_ADMIN` for good (bounding, ambient, inheritable, effective and
/// permitted sets): nothing this process runs later can change the network again.
pub fn drop_net_admin() -> Result<(), RouteError> {
    let fail = |reason: caps::errors::CapsError| RouteError::Drop { what: "CAP_NET_ADMIN", reason: reason.to_string() };
    let cap = Capability::CAP_NET_ADMIN;
    if caps::has_cap(None, CapSet::Bounding, cap).map_err(fail)? {
        caps::drop(None, CapSet::Bounding, cap).map_err(fail)?;
    }
    for set in [CapSet::Ambient, CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
        caps::drop(None, set, cap).map_err(fail)?;
    }
    Ok(())
}

/// Gives up every capability for good.
pub fn drop_all() -> Result<(), RouteError> {
    let fail =
        |reason: caps::errors::CapsError| RouteError::Drop { what: "every capability", reason: reason.to_string() };
    for cap in caps::read(None, CapSet::Bounding).map_err(fail)? {
        caps::drop(None, CapSet::Bounding, cap).map_err(fail)?;
    }
    for set in [CapSet::Ambient, CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
        caps::clear(None, set).map_err(fail)?;
    }
    Ok(())
}
