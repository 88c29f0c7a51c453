//! The generated gRPC messages, clients and servers of the gateway contract (build.rs
//! compiles `proto/`). Messages that carry secrets get a Debug that names keys only.

use std::fmt;

/// `openshell.*` packages, nested as prost's cross-package paths expect.
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod openshell {
    /// `openshell.v1`: the OpenShell service.
    pub mod v1 {
        tonic::include_proto!("openshell.v1");
    }
    /// `openshell.sandbox.v1`: the policy messages.
    pub mod sandbox {
        /// Version 1.
        pub mod v1 {
            tonic::include_proto!("openshell.sandbox.v1");
        }
    }
    /// `openshell.inference.v1`: inference routes.
    pub mod inference {
        /// Version 1.
        pub mod v1 {
            tonic::include_proto!("openshell.inference.v1");
        }
    }
}

pub use openshell::inference::v1 as inference;
pub use openshell::sandbox::v1 as sandbox;
pub use openshell::v1::*;

impl fmt::Debug for GetSandboxProviderEnvironmentResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<&String> = self.environment.keys().collect();
        keys.sort();
        let mut bindings: Vec<&String> = self.static_credential_bindings.keys().collect();
        bindings.sort();
        f.debug_struct("GetSandboxProviderEnvironmentResponse")
            .field("environment_keys", &keys)
            .field("provider_env_revision", &self.provider_env_revision)
            .field("credential_expires_at_ms", &self.credential_expires_at_ms)
            .field("static_credential_bindings", &bindings)
            .field("non_secret_environment_keys", &self.non_secret_environment_keys)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for inference::ResolvedRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolvedRoute")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("protocols", &self.protocols)
            .field("api_key", &if self.api_key.is_empty() { "" } else { "[redacted]" })
            .field("model_id", &self.model_id)
            .field("provider_type", &self.provider_type)
            .field("timeout_secs", &self.timeout_secs)
            .field("model_in_path", &self.model_in_path)
            .field("request_path_override", &self.request_path_override)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    /// Appends a field the contract does not list (as a newer gateway would send).
    fn with_unknown_fields(mut bytes: Vec<u8>) -> Vec<u8> {
        // Field 99, varint 7; field 100, length-delimited "new"; field 4 (listed as existing).
        bytes.extend_from_slice(&[0x98, 0x06, 0x07]);
        bytes.extend_from_slice(&[0xa2, 0x06, 0x03, b'n', b'e', b'w']);
        bytes.extend_from_slice(&[0x22, 0x02, b'x', b'y']);
        bytes
    }

    #[test]
    fn unknown_fields_are_skipped() {
        let response = GetSandboxConfigResponse {
            policy: Some(sandbox::SandboxPolicy { version: 1, ..Default::default() }),
            version: 3,
            policy_hash: "abc".into(),
            config_revision: 9,
            provider_env_revision: 2,
            policy_source: PolicySource::Global.into(),
            global_policy_version: 4,
            policy_validation_failure_mode: "retain_last_valid".into(),
        };
        let decoded = GetSandboxConfigResponse::decode(with_unknown_fields(response.encode_to_vec()).as_slice())
            .expect("unknown fields are tolerated");
        assert_eq!(decoded, response);

        let frame = RelayFrame { payload: Some(relay_frame::Payload::Data(bytes::Bytes::from_static(b"hi"))) };
        let decoded = RelayFrame::decode(with_unknown_fields(frame.encode_to_vec()).as_slice()).unwrap();
        assert_eq!(decoded, frame);
    }

    #[test]
    fn field_numbers_match_the_contract() {
        // exit_code is field 3 (tag 0x18), instance_id field 2 (0x12).
        let bytes = ReportMainProcessExitRequest { sandbox_id: String::new(), instance_id: "i".into(), exit_code: 7 }
            .encode_to_vec();
        assert_eq!(bytes, [0x12, 0x01, b'i', 0x18, 0x07]);
        // provider_env_revision is field 8 (tag 0x40) in the config response.
        let bytes = GetSandboxConfigResponse { provider_env_revision: 5, ..Default::default() }.encode_to_vec();
        assert_eq!(bytes, [0x40, 0x05]);
        // credential_binding is field 24 (tag 0xc2 0x01) of an endpoint.
        let endpoint = sandbox::NetworkEndpoint {
            credential_binding: Some(sandbox::NetworkCredentialBinding { provider: "p".into() }),
            ..Default::default()
        };
        assert_eq!(endpoint.encode_to_vec(), [0xc2, 0x01, 0x03, 0x0a, 0x01, b'p']);
        // policy_source is field 6 (tag 0x30), global_policy_version 7 (0x38), the failure mode 11 (0x5a).
        let response = GetSandboxConfigResponse {
            policy_source: PolicySource::Global.into(),
            global_policy_version: 2,
            policy_validation_failure_mode: "x".into(),
            ..Default::default()
        };
        assert_eq!(response.encode_to_vec(), [0x30, 0x02, 0x38, 0x02, 0x5a, 0x01, b'x']);
        // model_in_path is field 8 (0x40), request_path_override 9 (0x4a), kept when empty (optional).
        let route = inference::ResolvedRoute {
            model_in_path: true,
            request_path_override: Some(String::new()),
            ..Default::default()
        };
        assert_eq!(route.encode_to_vec(), [0x40, 0x01, 0x4a, 0x00]);
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let env = GetSandboxProviderEnvironmentResponse {
            environment: [("GITHUB_TOKEN".to_owned(), "ghp_secret".to_owned())].into(),
            ..Default::default()
        };
        let text = format!("{env:?}");
        assert!(text.contains("GITHUB_TOKEN") && !text.contains("ghp_secret"), "{text}");
        let route = inference::ResolvedRoute { api_key: "sk-secret".into(), ..Default::default() };
        let text = format!("{route:?}");
        assert!(text.contains("[redacted]") && !text.contains("sk-secret"), "{text}");
    }
}
