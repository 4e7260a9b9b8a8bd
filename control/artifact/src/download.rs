//! Downloads a zip artifact over http(s) into an unnamed file, connecting
//! only to addresses the [`SourcePolicy`] permits.
//!
//! Names are resolved by [`GuardedResolver`], which hands reqwest nothing
//! but checked addresses, so the connection goes to what was checked (no
//! second lookup to rebind). IP literals never reach a resolver: the first
//! URL and every redirect target are checked before reqwest connects.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::redirect;
use url::Url;

use crate::policy::HostRefused;
use crate::spool::Spool;
use crate::{ArtifactError, Limits, SourcePolicy};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const TOTAL_TIMEOUT: Duration = Duration::from_secs(600);
const MAX_REDIRECTS: usize = 5;

/// Streams `url` into an unnamed temporary file inside `dir` (it vanishes
/// when dropped), counting bytes as they arrive. Returns it rewound.
pub(crate) async fn download(
    url: &Url,
    dir: &Path,
    limits: &Limits,
) -> Result<File, ArtifactError> {
    let fail = |source: reqwest::Error| match refusal(&source) {
        Some(target) => ArtifactError::RefusedHost { uri: target },
        None => ArtifactError::Download {
            url: url.to_string(),
            source,
        },
    };
    let policy = Arc::new(limits.sources.clone());
    policy.check_literal(url)?;
    // reqwest is built without a TLS crypto backend of its own; ring is the
    // one this workspace links. `Err` means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(TOTAL_TIMEOUT)
        // An HTTP(S)_PROXY in emberd's environment would connect for us,
        // to addresses nobody checked.
        .no_proxy()
        .dns_resolver(GuardedResolver(Arc::clone(&policy)))
        .redirect(guarded_redirects(policy))
        .build()
        .map_err(fail)?;
    let mut response = client.get(url.clone()).send().await.map_err(fail)?;
    let status = response.status();
    if !status.is_success() {
        return Err(ArtifactError::HttpStatus {
            url: url.to_string(),
            status: status.as_u16(),
        });
    }
    let mut spool = Spool::new(dir, url.as_str(), limits, response.content_length())?;
    while let Some(chunk) = response.chunk().await.map_err(fail)? {
        spool.push(&chunk)?;
    }
    spool.finish()
}

/// Resolves names for reqwest, returning only permitted addresses.
struct GuardedResolver(Arc<SourcePolicy>);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.0);
        Box::pin(async move {
            let addrs = policy.resolve_permitted(name.as_str()).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Follows at most [`MAX_REDIRECTS`] redirects, to http(s) only, and never
/// to an IP literal the policy refuses (a name goes through the resolver).
fn guarded_redirects(policy: Arc<SourcePolicy>) -> redirect::Policy {
    redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
        }
        let target = attempt.url();
        if !matches!(target.scheme(), "http" | "https") {
            let scheme = target.scheme().to_string();
            return attempt.error(format!("redirect to a {scheme:?} URI"));
        }
        if policy.check_literal(target).is_err() {
            let target = target.to_string();
            return attempt.error(HostRefused { target });
        }
        attempt.follow()
    })
}

/// The refused target, if `error` comes from the resolver or the redirect
/// policy refusing an address.
fn refusal(error: &reqwest::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(refused) = e.downcast_ref::<HostRefused>() {
            return Some(refused.target.clone());
        }
        source = e.source();
    }
    None
}
