//! The OpenID Connect client: Keycloak (realm `infra`) in production, `oidc-provider` in tests.
//!
//! Everything cryptographic is the `openidconnect` crate's: discovery, the authorization URL with
//! PKCE (S256), `state` and `nonce`, the code exchange, and ID token verification (signature,
//! issuer, audience, expiry, nonce, `at_hash`). What this module adds:
//! - caching: the discovery document and JWKS are fetched once and kept; an ID token signed with
//!   a key id the cached JWKS lacks (the provider rotated its keys) makes it fetch the JWKS again,
//!   at most once per [`OidcSettings::jwks_refresh_min_interval`], and verify again;
//! - an allowed clock skew, fed to the crate's verifier as a shifted clock (`exp`) and an
//!   issued-at check (`iat`), since clocks of two machines never agree exactly;
//! - errors mapped to [`IdentityError`] variants a person can act on.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreErrorResponseType,
    CoreGenderClaim, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
    CoreProviderMetadata, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AccessTokenHash, AdditionalClaims, AuthorizationCode, ClaimsVerificationError, ClientId,
    ClientSecret, CsrfToken, DiscoveryError, EmptyExtraTokenFields, EndpointMaybeSet,
    EndpointNotSet, EndpointSet, HttpClientError, IdToken, IdTokenFields, IdTokenVerifier,
    IssuerUrl, JsonWebKey, JsonWebKeySet, Nonce, OAuth2TokenResponse, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope, SignatureVerificationError,
    StandardErrorResponse, StandardTokenResponse, TokenResponse, reqwest,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::{Mutex, RwLock};

use super::IdentityError;
use super::roles::VerifiedClaims;
use super::trusted_proxy::AccessUrl;

/// Where the provider sends the browser back to, under the access URL.
pub const CALLBACK_PATH: &str = "/api/v2/users/oidc/callback";
/// Scopes asked for besides `openid` (Keycloak's defaults carry the groups mapper).
pub const DEFAULT_SCOPES: &[&str] = &["profile", "email"];
/// Default allowed difference between this server's clock and the provider's.
pub const DEFAULT_ALLOWED_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Default minimum time between JWKS refreshes caused by an unknown key id.
pub const DEFAULT_JWKS_REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// Default timeout of each request to the provider.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Prefix of the issued-at verifier's message, so it maps to [`IdentityError::TokenNotYetValid`].
const NOT_YET_VALID: &str = "issued in the future";

/// Every claim the crate does not model itself (the groups claim among them).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct OtherClaims {
    /// Claim name → value.
    #[serde(flatten)]
    pub claims: Map<String, Value>,
}

impl AdditionalClaims for OtherClaims {}

type IdFields = IdTokenFields<
    OtherClaims,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type TokenResponseBody = StandardTokenResponse<IdFields, CoreTokenType>;
type OurIdToken = IdToken<
    OtherClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type Client = openidconnect::Client<
    OtherClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    TokenResponseBody,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;
type TokenError = RequestTokenError<
    HttpClientError<reqwest::Error>,
    StandardErrorResponse<CoreErrorResponseType>,
>;

/// OIDC client settings.
#[derive(Clone)]
pub struct OidcSettings {
    /// Issuer URL (`CODER_OIDC_ISSUER_URL`), e.g. `https://auth.lumie-edu.com/realms/infra`.
    pub issuer_url: String,
    /// Client id (`CODER_OIDC_CLIENT_ID`).
    pub client_id: String,
    client_secret: String,
    /// `<access URL>/api/v2/users/oidc/callback`.
    pub redirect_url: String,
    /// Scopes besides `openid`.
    pub scopes: Vec<String>,
    /// Allowed clock difference with the provider.
    pub allowed_clock_skew: Duration,
    /// Minimum time between JWKS refreshes caused by an unknown key id.
    pub jwks_refresh_min_interval: Duration,
    /// Timeout of each request to the provider.
    pub http_timeout: Duration,
}

impl std::fmt::Debug for OidcSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcSettings")
            .field("issuer_url", &self.issuer_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("redirect_url", &self.redirect_url)
            .field("scopes", &self.scopes)
            .field("allowed_clock_skew", &self.allowed_clock_skew)
            .finish_non_exhaustive()
    }
}

impl OidcSettings {
    /// Settings with the defaults; a missing or blank secret is refused here, so the server
    /// does not start without one.
    pub fn new(
        issuer_url: &str,
        client_id: &str,
        client_secret: Option<&str>,
        access_url: &AccessUrl,
    ) -> Result<Self, IdentityError> {
        let client_secret = client_secret
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or(IdentityError::MissingClientSecret)?
            .to_string();
        let issuer_url = issuer_url.trim().trim_end_matches('/').to_string();
        if !(issuer_url.starts_with("http://") || issuer_url.starts_with("https://")) {
            return Err(IdentityError::InvalidSetting {
                setting: "CODER_OIDC_ISSUER_URL",
                message: format!("{issuer_url:?} is not an http(s) URL"),
            });
        }
        let client_id = client_id.trim().to_string();
        if client_id.is_empty() {
            return Err(IdentityError::InvalidSetting {
                setting: "CODER_OIDC_CLIENT_ID",
                message: "is empty (the realm's client is `coder`)".into(),
            });
        }
        Ok(OidcSettings {
            issuer_url,
            client_id,
            client_secret,
            redirect_url: access_url.join(CALLBACK_PATH),
            scopes: DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect(),
            allowed_clock_skew: DEFAULT_ALLOWED_CLOCK_SKEW,
            jwks_refresh_min_interval: DEFAULT_JWKS_REFRESH_MIN_INTERVAL,
            http_timeout: DEFAULT_HTTP_TIMEOUT,
        })
    }
}

/// What the server keeps between sending the browser to the provider and its return (as JSON
/// in the database when replicas share it: see `routes`).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PendingLogin {
    /// `state` sent (and expected back).
    pub state: String,
    nonce: String,
    pkce_verifier: String,
    /// Where to send the browser after login (a local path).
    pub return_to: String,
}

impl std::fmt::Debug for PendingLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingLogin")
            .field("return_to", &self.return_to)
            .finish_non_exhaustive()
    }
}

/// The OIDC client with its cached provider metadata and keys.
pub struct OidcClient {
    settings: OidcSettings,
    issuer: IssuerUrl,
    redirect: RedirectUrl,
    http: reqwest::Client,
    metadata: RwLock<Option<Arc<CoreProviderMetadata>>>,
    last_kid_refresh: Mutex<Option<Instant>>,
    jwks_fetches: AtomicU64,
}

impl std::fmt::Debug for OidcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcClient")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl OidcClient {
    /// A client; nothing is fetched until [`OidcClient::discover`] or the first login.
    pub fn new(settings: OidcSettings) -> Result<Self, IdentityError> {
        let issuer = IssuerUrl::new(settings.issuer_url.clone()).map_err(|e| {
            IdentityError::InvalidSetting {
                setting: "CODER_OIDC_ISSUER_URL",
                message: e.to_string(),
            }
        })?;
        let redirect = RedirectUrl::new(settings.redirect_url.clone()).map_err(|e| {
            IdentityError::InvalidSetting {
                setting: "CODER_ACCESS_URL",
                message: format!("callback URL: {e}"),
            }
        })?;
        // No redirects: an OIDC endpoint that redirects is misconfigured, and following one
        // would be an SSRF door.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.http_timeout)
            .build()
            .map_err(|e| IdentityError::InvalidSetting {
                setting: "CODER_OIDC_ISSUER_URL",
                message: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(OidcClient {
            settings,
            issuer,
            redirect,
            http,
            metadata: RwLock::new(None),
            last_kid_refresh: Mutex::new(None),
            jwks_fetches: AtomicU64::new(0),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &OidcSettings {
        &self.settings
    }

    /// Fetches (again) the discovery document and the JWKS, and caches them.
    pub async fn discover(&self) -> Result<Arc<CoreProviderMetadata>, IdentityError> {
        let metadata = CoreProviderMetadata::discover_async(self.issuer.clone(), &self.http)
            .await
            .map_err(|e| self.discovery_error("discovery", e))?;
        self.jwks_fetches.fetch_add(1, Ordering::Relaxed);
        let metadata = Arc::new(metadata);
        *self.metadata.write().await = Some(metadata.clone());
        tracing::info!(issuer = %self.settings.issuer_url, keys = ?key_ids(metadata.jwks()), "OIDC provider discovered");
        Ok(metadata)
    }

    /// The cached metadata, discovering it first when there is none (or the last try failed).
    pub async fn metadata(&self) -> Result<Arc<CoreProviderMetadata>, IdentityError> {
        if let Some(m) = self.metadata.read().await.clone() {
            return Ok(m);
        }
        self.discover().await
    }

    /// Key ids of the cached JWKS.
    pub async fn key_ids(&self) -> Vec<String> {
        match self.metadata.read().await.as_ref() {
            Some(m) => key_ids(m.jwks()),
            None => vec![],
        }
    }

    /// How many times the JWKS was fetched (discovery included).
    pub fn jwks_fetches(&self) -> u64 {
        self.jwks_fetches.load(Ordering::Relaxed)
    }

    fn client(&self, metadata: &CoreProviderMetadata) -> Client {
        Client::from_provider_metadata(
            metadata.clone(),
            ClientId::new(self.settings.client_id.clone()),
            Some(ClientSecret::new(self.settings.client_secret.clone())),
        )
        .set_redirect_uri(self.redirect.clone())
    }

    /// The provider URL to send the browser to, and what to keep until it comes back.
    pub async fn begin_login(
        &self,
        return_to: &str,
    ) -> Result<(String, PendingLogin), IdentityError> {
        let metadata = self.metadata().await?;
        let client = self.client(&metadata);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for scope in &self.settings.scopes {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
        Ok((
            url.to_string(),
            PendingLogin {
                state: state.secret().clone(),
                nonce: nonce.secret().clone(),
                pkce_verifier: verifier.secret().clone(),
                return_to: return_to.to_string(),
            },
        ))
    }

    /// Checks the callback's `iss` parameter (RFC 9207), when the provider sends one.
    pub fn check_issuer_parameter(&self, iss: Option<&str>) -> Result<(), IdentityError> {
        match iss {
            Some(iss) if iss.trim_end_matches('/') != self.settings.issuer_url => {
                Err(IdentityError::IssuerMismatch {
                    expected: self.settings.issuer_url.clone(),
                    received: iss.to_string(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Exchanges the code (with the PKCE verifier) and verifies the ID token against the nonce.
    pub async fn complete_login(
        &self,
        pending: &PendingLogin,
        code: &str,
    ) -> Result<VerifiedClaims, IdentityError> {
        let metadata = self.metadata().await?;
        let client = self.client(&metadata);
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| IdentityError::IssuerBadResponse {
                issuer: self.settings.issuer_url.clone(),
                reason: format!("no token endpoint in the discovery document: {e}"),
            })?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(|e| self.token_error(e))?;
        let id_token = response.id_token().ok_or(IdentityError::NoIdToken)?;
        let nonce = Nonce::new(pending.nonce.clone());

        let mut metadata = metadata;
        let mut refreshed = false;
        loop {
            match self.verify(&metadata, id_token, &nonce, &response) {
                Err(ClaimsVerificationError::SignatureVerification(
                    SignatureVerificationError::NoMatchingKey,
                )) if !refreshed => {
                    refreshed = true;
                    metadata = self.refresh_jwks_for_unknown_kid(&metadata).await?;
                }
                Err(ClaimsVerificationError::SignatureVerification(
                    SignatureVerificationError::NoMatchingKey,
                )) => {
                    return Err(IdentityError::BadSignature {
                        detail: format!(
                            "signed with a key the provider's JWKS does not publish (known key ids {:?}); refreshed at most every {}s",
                            key_ids(metadata.jwks()),
                            self.settings.jwks_refresh_min_interval.as_secs()
                        ),
                    });
                }
                Err(e) => return Err(self.claims_error(e)),
                Ok(claims) => return Ok(claims),
            }
        }
    }

    fn verify(
        &self,
        metadata: &CoreProviderMetadata,
        id_token: &OurIdToken,
        nonce: &Nonce,
        response: &TokenResponseBody,
    ) -> Result<VerifiedClaims, ClaimsVerificationError> {
        let client = self.client(metadata);
        let skew = chrono::Duration::from_std(self.settings.allowed_clock_skew)
            .unwrap_or(chrono::Duration::zero());
        let verifier: IdTokenVerifier<'_, CoreJsonWebKey> = client
            .id_token_verifier()
            // `exp` is compared with a clock running `skew` behind ours: tolerance for a provider
            // whose clock is behind.
            .set_time_fn(move || Utc::now() - skew)
            .set_issue_time_verifier_fn(move |iat| {
                let now = Utc::now();
                if iat > now + skew {
                    Err(format!(
                        "{NOT_YET_VALID}: iat {iat} is {}s ahead of this server's clock ({now})",
                        (iat - now).num_seconds()
                    ))
                } else {
                    Ok(())
                }
            });
        let claims = id_token.claims(&verifier, nonce)?;
        if let Some(expected) = claims.access_token_hash() {
            let alg = id_token
                .signing_alg()
                .map_err(ClaimsVerificationError::SignatureVerification)?;
            let key = id_token
                .signing_key(&verifier)
                .map_err(ClaimsVerificationError::SignatureVerification)?;
            let actual = AccessTokenHash::from_token(response.access_token(), alg, key)
                .map_err(|e| ClaimsVerificationError::Other(format!("at_hash: {e}")))?;
            if actual != *expected {
                return Err(ClaimsVerificationError::Other(
                    "at_hash does not match the access token".into(),
                ));
            }
        }
        Ok(VerifiedClaims {
            issuer: claims.issuer().to_string(),
            subject: claims.subject().to_string(),
            preferred_username: claims.preferred_username().map(|u| u.to_string()),
            email: claims.email().map(|e| e.to_string()),
            name: claims
                .name()
                .and_then(|n| n.get(None))
                .map(|n| n.to_string()),
            other: claims.additional_claims().claims.clone(),
        })
    }

    /// Fetches the JWKS again after a token named an unknown key id, unless another request just
    /// did (then its result is used) or the last such refresh is too recent (bounds how often a
    /// forged `kid` can make us call the provider).
    async fn refresh_jwks_for_unknown_kid(
        &self,
        stale: &Arc<CoreProviderMetadata>,
    ) -> Result<Arc<CoreProviderMetadata>, IdentityError> {
        let mut last = self.last_kid_refresh.lock().await;
        if let Some(current) = self.metadata.read().await.as_ref()
            && !Arc::ptr_eq(current, stale)
        {
            return Ok(current.clone());
        }
        if last.is_some_and(|t| t.elapsed() < self.settings.jwks_refresh_min_interval) {
            return Ok(stale.clone());
        }
        let jwks = JsonWebKeySet::fetch_async(stale.jwks_uri(), &self.http)
            .await
            .map_err(|e| self.discovery_error("JWKS", e))?;
        self.jwks_fetches.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            issuer = %self.settings.issuer_url,
            before = ?key_ids(stale.jwks()),
            after = ?key_ids(&jwks),
            "OIDC signing keys refreshed after a token named an unknown key id"
        );
        let fresh = Arc::new(stale.as_ref().clone().set_jwks(jwks));
        *self.metadata.write().await = Some(fresh.clone());
        *last = Some(Instant::now());
        Ok(fresh)
    }

    fn discovery_error(
        &self,
        what: &str,
        e: DiscoveryError<HttpClientError<reqwest::Error>>,
    ) -> IdentityError {
        let issuer = self.settings.issuer_url.clone();
        match e {
            DiscoveryError::Request(e) => IdentityError::IssuerUnreachable {
                issuer,
                reason: error_chain(&e),
            },
            DiscoveryError::Response(status, _, _) => IdentityError::IssuerBadResponse {
                issuer,
                reason: format!(
                    "{what} answered HTTP {status}: is CODER_OIDC_ISSUER_URL the realm URL (…/realms/infra)?"
                ),
            },
            other => IdentityError::IssuerBadResponse {
                issuer,
                reason: format!("{what}: {}", error_chain(&other)),
            },
        }
    }

    fn token_error(&self, e: TokenError) -> IdentityError {
        match e {
            RequestTokenError::ServerResponse(r) => {
                let description = r.error_description().cloned().unwrap_or_default();
                classify_token_error(r.error(), description, &self.settings.client_id)
            }
            RequestTokenError::Request(e) => IdentityError::IssuerUnreachable {
                issuer: self.settings.issuer_url.clone(),
                reason: format!("token endpoint: {}", error_chain(&e)),
            },
            other => IdentityError::IssuerBadResponse {
                issuer: self.settings.issuer_url.clone(),
                reason: format!("token endpoint: {}", error_chain(&other)),
            },
        }
    }

    fn claims_error(&self, e: ClaimsVerificationError) -> IdentityError {
        let skew = self.settings.allowed_clock_skew;
        match e {
            ClaimsVerificationError::Expired(detail) if detail.starts_with(NOT_YET_VALID) => {
                IdentityError::TokenNotYetValid { detail, skew }
            }
            ClaimsVerificationError::Expired(detail) => {
                IdentityError::TokenExpired { detail, skew }
            }
            ClaimsVerificationError::InvalidNonce(detail) => IdentityError::WrongNonce { detail },
            ClaimsVerificationError::SignatureVerification(e) => IdentityError::BadSignature {
                detail: e.to_string(),
            },
            other => IdentityError::InvalidIdToken {
                detail: other.to_string(),
            },
        }
    }
}

/// Token endpoint error → what to tell. Keycloak answers a wrong secret with `unauthorized_client`
/// ("Invalid client or Invalid client credentials") where the spec says `invalid_client`.
fn classify_token_error(
    error: &CoreErrorResponseType,
    description: String,
    client_id: &str,
) -> IdentityError {
    let lower = description.to_ascii_lowercase();
    match error {
        CoreErrorResponseType::InvalidClient => IdentityError::WrongClientSecret {
            client_id: client_id.to_string(),
        },
        CoreErrorResponseType::UnauthorizedClient
            if lower.contains("credentials") || lower.contains("secret") =>
        {
            IdentityError::WrongClientSecret {
                client_id: client_id.to_string(),
            }
        }
        CoreErrorResponseType::InvalidGrant => IdentityError::CodeRejected { description },
        other => IdentityError::TokenEndpoint {
            error: other.as_ref().to_string(),
            description,
        },
    }
}

/// A pending login with made-up secrets, for store tests.
#[cfg(test)]
pub(crate) fn test_pending(state: &str) -> PendingLogin {
    PendingLogin {
        state: state.to_string(),
        nonce: format!("nonce-{state}"),
        pkce_verifier: format!("verifier-{state}"),
        return_to: "/".into(),
    }
}

fn key_ids(jwks: &JsonWebKeySet<CoreJsonWebKey>) -> Vec<String> {
    jwks.keys()
        .iter()
        .filter_map(|k| k.key_id().map(|id| id.to_string()))
        .collect()
}

use lumie_contract::diagnostics::error_chain;

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> AccessUrl {
        AccessUrl::parse("https://coder.lumie-infra.com").unwrap()
    }

    #[test]
    fn missing_or_blank_secret_refuses_to_start_and_names_the_secret() {
        for secret in [None, Some(""), Some("   \n")] {
            let e = OidcSettings::new("https://kc/realms/infra", "coder", secret, &access())
                .unwrap_err();
            assert!(matches!(e, IdentityError::MissingClientSecret), "{e}");
            let text = e.to_string();
            assert!(text.contains("coder-oidc-secret"), "{text}");
            assert!(text.contains("CODER_OIDC_CLIENT_SECRET"), "{text}");
        }
    }

    #[test]
    fn settings_defaults_and_redirect_url() {
        let s = OidcSettings::new(
            "https://kc/realms/infra/",
            "coder",
            Some(" s3cret "),
            &access(),
        )
        .unwrap();
        assert_eq!(s.issuer_url, "https://kc/realms/infra");
        assert_eq!(
            s.redirect_url,
            "https://coder.lumie-infra.com/api/v2/users/oidc/callback"
        );
        assert_eq!(s.client_secret, "s3cret");
        assert_eq!(s.scopes, vec!["profile", "email"]);
        assert_eq!(s.allowed_clock_skew, DEFAULT_ALLOWED_CLOCK_SKEW);
        assert!(
            !format!("{s:?}").contains("s3cret"),
            "Debug redacts the secret"
        );
        let e = OidcSettings::new("kc/realms/infra", "coder", Some("x"), &access()).unwrap_err();
        assert!(e.to_string().contains("CODER_OIDC_ISSUER_URL"), "{e}");
        let e = OidcSettings::new("https://kc", " ", Some("x"), &access()).unwrap_err();
        assert!(e.to_string().contains("CODER_OIDC_CLIENT_ID"), "{e}");
    }

    #[test]
    fn token_errors_table() {
        let cases: &[(CoreErrorResponseType, &str, &str)] = &[
            (
                CoreErrorResponseType::InvalidClient,
                "client authentication failed",
                "wrong_client_secret",
            ),
            (
                CoreErrorResponseType::UnauthorizedClient,
                "Invalid client or Invalid client credentials",
                "wrong_client_secret",
            ),
            (
                CoreErrorResponseType::UnauthorizedClient,
                "client not allowed to use grant type",
                "token_endpoint",
            ),
            (
                CoreErrorResponseType::InvalidGrant,
                "grant request is invalid",
                "code_rejected",
            ),
            (
                CoreErrorResponseType::InvalidRequest,
                "missing code_verifier",
                "token_endpoint",
            ),
        ];
        for (error, description, kind) in cases {
            let e = classify_token_error(error, description.to_string(), "coder");
            assert_eq!(e.kind(), *kind, "{error:?} {description}");
        }
    }

    #[test]
    fn error_chain_keeps_the_cause() {
        #[derive(Debug, thiserror::Error)]
        #[error("request failed")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
        assert_eq!(error_chain(&e), "request failed: connection refused");
    }

    #[tokio::test]
    async fn unreachable_issuer_is_named() {
        // A port nothing listens on: bind, read the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let issuer = format!("http://127.0.0.1:{port}/realms/infra");
        let client =
            OidcClient::new(OidcSettings::new(&issuer, "coder", Some("s"), &access()).unwrap())
                .unwrap();
        let e = client.begin_login("/").await.unwrap_err();
        assert_eq!(e.kind(), "issuer_unreachable", "{e}");
        let text = e.to_string();
        assert!(text.contains(&issuer), "{text}");
        assert!(text.contains("does not answer"), "{text}");
        assert!(
            text.to_lowercase().contains("refused"),
            "cause kept: {text}"
        );
    }

    #[test]
    fn issuer_parameter_check() {
        let client = OidcClient::new(
            OidcSettings::new("https://kc/realms/infra", "coder", Some("s"), &access()).unwrap(),
        )
        .unwrap();
        assert!(client.check_issuer_parameter(None).is_ok());
        assert!(
            client
                .check_issuer_parameter(Some("https://kc/realms/infra"))
                .is_ok()
        );
        assert!(
            client
                .check_issuer_parameter(Some("https://kc/realms/infra/"))
                .is_ok()
        );
        let e = client
            .check_issuer_parameter(Some("https://evil/realms/infra"))
            .unwrap_err();
        assert_eq!(e.kind(), "issuer_mismatch");
    }
}
