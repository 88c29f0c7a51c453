//! The russh handler of one SSH connection: authentication (`none` on the Unix socket,
//! authorized public keys on TCP), request replies in arrival order, session channels
//! handed to their own task, loopback-only `direct-tcpip`, every forwarding refused.

use std::sync::Arc;

use russh::keys::PublicKey;
use russh::server::{Auth, ChannelOpenHandle, Handler, Msg, Session};
use russh::{Channel, ChannelId};

use super::{Shared, forward, session};
use crate::agent::audit;
use crate::shutdown::Shutdown;
use crate::telemetry::ocsf::{Scope, scoped};

/// One client connection.
pub(super) struct Connection {
    pub(super) shared: Arc<Shared>,
    pub(super) tcp: bool,
    /// Channel tasks are tracked so the drain at exit waits for their children to end.
    pub(super) shutdown: Shutdown,
    /// The connection's audit scope: russh calls the handler from a task of its own, so the
    /// handler's events and channel tasks enter it explicitly.
    pub(super) scope: Scope,
}

impl Handler for Connection {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(if self.tcp { Auth::reject() } else { Auth::Accept })
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.known_key(user, offer.public_key))
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let auth = self.known_key(user, key.public_key);
        if auth == Auth::Accept {
            self.scope.enter(|| audit::ssh_key(user, true));
        }
        Ok(auth)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        self.shutdown.spawn(scoped(self.scope.clone(), session::serve(channel, session.handle(), self.shared.clone())));
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.shutdown.spawn(scoped(self.scope.clone(), forward::open(channel, host.to_owned(), port, reply)));
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _cols: u32,
        _rows: u32,
        _width: u32,
        _height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Acknowledged and ignored: children get the environment the supervisor builds.
        session.channel_success(channel)
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name == "sftp" && self.shared.sftp_server.is_some() {
            session.channel_success(channel)
        } else {
            let reason = format!("refused the SSH subsystem `{}`", name.escape_debug());
            self.scope.enter(|| audit::ssh_refused(None, &reason));
            session.channel_failure(channel)
        }
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _protocol: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let to = u16::try_from(*port).ok().map(|port| (address, port));
        self.scope
            .enter(|| audit::ssh_refused(to, "refused SSH remote forwarding: the agent opens no listening ports"));
        Ok(false)
    }

    async fn streamlocal_forward(&mut self, socket_path: &str, _session: &mut Session) -> Result<bool, Self::Error> {
        let _ = socket_path;
        let reason = "refused SSH remote socket forwarding: the agent opens no listening sockets";
        self.scope.enter(|| audit::ssh_refused(None, reason));
        Ok(false)
    }
}

impl Connection {
    fn known_key(&self, user: &str, key: &PublicKey) -> Auth {
        if self.tcp && self.shared.authorized.iter().any(|k| k.key_data() == key.key_data()) {
            Auth::Accept
        } else {
            self.scope.enter(|| audit::ssh_key(user, false));
            Auth::reject()
        }
    }
}
