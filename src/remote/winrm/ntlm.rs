//! NTLM (v2, with the session key that sealing needs) for WinRM over HTTP, from the `sspi` crate:
//! the client's two steps, and the acceptor the simulator uses. HTTP carries the tokens as
//! `Authorization: Negotiate <base64>` / `WWW-Authenticate: Negotiate <base64>` (raw NTLMSSP
//! messages, which Windows accepts under Negotiate, as pypsrp sends them).

use secrecy::{ExposeSecret, SecretString};
use sspi::{
    AuthIdentity, BufferType, ClientRequestFlags, CredentialUse, DataRepresentation, Ntlm, SecurityBuffer,
    SecurityStatus, ServerRequestFlags, Sspi, SspiEx, SspiImpl, Username, UsernameParts,
};

/// The first bytes of every NTLM message.
pub(crate) const NTLMSSP: &[u8] = b"NTLMSSP\0";

/// True when `token` is a raw NTLM message (not SPNEGO-wrapped).
pub(crate) fn is_ntlm(token: &[u8]) -> bool {
    token.starts_with(NTLMSSP)
}

type Credentials = <Ntlm as SspiImpl>::CredentialsHandle;

/// The client side of one NTLM conversation.
pub(crate) struct NtlmClient {
    ntlm: Ntlm,
    credentials: Credentials,
    target: String,
}

impl std::fmt::Debug for NtlmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NtlmClient").field("target", &self.target).finish_non_exhaustive()
    }
}

impl NtlmClient {
    /// `user` is a UPN (`alice@contoso.com`) or a down-level name (`CONTOSO\alice`); `target`
    /// the service principal name (`HTTP/<host>`).
    pub(crate) fn new(user: &str, password: &SecretString, target: &str) -> Result<Self, String> {
        let username = Username::parse(user).map_err(|e| format!("user name {user:?} is not usable for NTLM: {e}"))?;
        let identity = AuthIdentity { username, password: password.expose_secret().to_string().into() };
        let mut ntlm = Ntlm::new();
        let credentials = ntlm
            .acquire_credentials_handle()
            .with_credential_use(CredentialUse::Outbound)
            .with_auth_data(&identity)
            .execute(&mut ntlm)
            .map_err(|e| format!("NTLM credentials: {e}"))?
            .credentials_handle;
        Ok(Self { ntlm, credentials, target: target.to_string() })
    }

    /// The NEGOTIATE message (first leg).
    pub(crate) fn negotiate(&mut self) -> Result<Vec<u8>, sspi::Error> {
        self.step(None)
    }

    /// The AUTHENTICATE message answering the server's CHALLENGE (second leg); afterwards the
    /// context seals and unseals.
    pub(crate) fn authenticate(&mut self, challenge: &[u8]) -> Result<Vec<u8>, sspi::Error> {
        self.step(Some(challenge))
    }

    fn step(&mut self, input: Option<&[u8]>) -> Result<Vec<u8>, sspi::Error> {
        let mut output = vec![SecurityBuffer::new(Vec::new(), BufferType::Token)];
        let mut input = input.map(|token| vec![SecurityBuffer::new(token.to_vec(), BufferType::Token)]);
        let mut builder = self
            .ntlm
            .initialize_security_context()
            .with_credentials_handle(&mut self.credentials)
            .with_context_requirements(
                ClientRequestFlags::CONFIDENTIALITY
                    | ClientRequestFlags::INTEGRITY
                    | ClientRequestFlags::ALLOCATE_MEMORY,
            )
            .with_target_data_representation(DataRepresentation::Native)
            .with_target_name(&self.target)
            .with_output(&mut output);
        if let Some(input) = input.as_mut() {
            builder = builder.with_input(input);
        }
        let result = self.ntlm.initialize_security_context_impl(&mut builder)?.resolve_to_result()?;
        if matches!(result.status, SecurityStatus::CompleteAndContinue | SecurityStatus::CompleteNeeded) {
            self.ntlm.complete_auth_token(&mut output)?;
        }
        Ok(std::mem::take(&mut output[0].buffer))
    }

    /// The security context, for sealing.
    pub(crate) fn context(&mut self) -> &mut Ntlm {
        &mut self.ntlm
    }
}

/// The server side of one NTLM conversation (the simulator's), checking the password of
/// whichever user the client names.
pub(crate) struct NtlmServer {
    ntlm: Ntlm,
}

impl std::fmt::Debug for NtlmServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NtlmServer").finish_non_exhaustive()
    }
}

impl Default for NtlmServer {
    fn default() -> Self {
        Self { ntlm: Ntlm::new() }
    }
}

impl NtlmServer {
    /// The CHALLENGE answering a NEGOTIATE.
    pub(crate) fn challenge(&mut self, negotiate: &[u8]) -> Result<Vec<u8>, sspi::Error> {
        let (_, out) = self.accept(negotiate)?;
        Ok(out)
    }

    /// Reads the AUTHENTICATE message and returns the user it names: `user@domain` style when
    /// the client sent a UPN, `DOMAIN\user` when it sent a domain. [`Self::verify`] then checks
    /// that user's password.
    pub(crate) fn user_of(&mut self, authenticate: &[u8]) -> Result<Username, sspi::Error> {
        self.accept(authenticate)?;
        Ok(self.ntlm.query_context_names()?.username)
    }

    /// Checks the AUTHENTICATE message against `password` (the named user's); on success the
    /// context seals and unseals.
    pub(crate) fn verify(&mut self, username: Username, password: &str) -> Result<(), sspi::Error> {
        self.ntlm.custom_set_auth_identity(AuthIdentity { username, password: password.to_string().into() })?;
        self.ntlm.complete_auth_token(&mut [])?;
        Ok(())
    }

    fn accept(&mut self, token: &[u8]) -> Result<(SecurityStatus, Vec<u8>), sspi::Error> {
        let mut input = vec![SecurityBuffer::new(token.to_vec(), BufferType::Token)];
        let mut output = vec![SecurityBuffer::new(Vec::new(), BufferType::Token)];
        // No identity up front: the user is only known from the AUTHENTICATE message.
        let mut credentials: Credentials = None;
        let builder = self
            .ntlm
            .accept_security_context()
            .with_credentials_handle(&mut credentials)
            .with_context_requirements(ServerRequestFlags::ALLOCATE_MEMORY)
            .with_target_data_representation(DataRepresentation::Native)
            .with_input(&mut input)
            .with_output(&mut output);
        let result = self.ntlm.accept_security_context_impl(builder)?.resolve_to_result()?;
        Ok((result.status, std::mem::take(&mut output[0].buffer)))
    }

    /// The security context, for sealing.
    pub(crate) fn context(&mut self) -> &mut Ntlm {
        &mut self.ntlm
    }
}

/// The user an NTLM AUTHENTICATE named, as the simulator's account table spells it: a UPN as
/// sent, or `user@domain` for a down-level `DOMAIN\user`.
pub(crate) fn account_key(username: &Username) -> String {
    match username.parts() {
        UsernameParts::UserPrincipalName(upn) => upn.upn().to_string(),
        UsernameParts::DownLevelLogonName(name) => match name.netbios_domain() {
            Some(domain) if !domain.is_empty() && !name.account_name().contains('@') => {
                format!("{}@{domain}", name.account_name())
            }
            _ => name.account_name().to_string(),
        },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A client and a server that completed NTLM with `password` (the client's) against
    /// `server_password` (the account's).
    pub(crate) fn established_pair(user: &str, password: &str, server_password: &str) -> (NtlmClient, NtlmServer) {
        let (client, server, verified) = handshake(user, password, server_password);
        verified.expect("the handshake completes");
        (client, server)
    }

    fn handshake(
        user: &str,
        password: &str,
        server_password: &str,
    ) -> (NtlmClient, NtlmServer, Result<(), sspi::Error>) {
        let mut client = NtlmClient::new(user, &SecretString::from(password.to_string()), "HTTP/sim").unwrap();
        let mut server = NtlmServer::default();
        let negotiate = client.negotiate().unwrap();
        assert!(is_ntlm(&negotiate));
        let challenge = server.challenge(&negotiate).unwrap();
        let authenticate = client.authenticate(&challenge).unwrap();
        let named = server.user_of(&authenticate).unwrap();
        assert_eq!(account_key(&named).to_lowercase(), user.to_lowercase());
        let verified = server.verify(named, server_password);
        (client, server, verified)
    }

    #[test]
    fn the_right_password_establishes_a_context() {
        let (_c, _s) = established_pair("alice@contoso.com", "secret", "secret");
    }

    #[test]
    fn a_wrong_password_is_refused() {
        let (_, _, verified) = handshake("alice@contoso.com", "wrong", "secret");
        assert!(verified.is_err());
    }
}
