//! Pulls from a real `docker-registry`, images pushed with `skopeo`.

mod common;

use base64::Engine as _;
use common::{digest_of, tar_layer, Auth, Layer, Layout, Registry};
use ember_registry::{
    BlobCache, Compression, ImageReference, PullLimits, RegistryClient, RegistryError,
    RegistryOptions,
};
use serde_json::json;

fn client(registry: &Registry, docker_config: Option<std::path::PathBuf>) -> RegistryClient {
    let options = RegistryOptions {
        insecure_registries: vec![registry.host()],
        docker_config,
        ..RegistryOptions::default()
    };
    RegistryClient::new(&options, PullLimits::default()).unwrap()
}

fn reference(registry: &Registry, rest: &str) -> ImageReference {
    format!("{}/{rest}", registry.host()).parse().unwrap()
}

fn digest(descriptor: &serde_json::Value) -> String {
    descriptor["digest"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn pulls_by_tag_and_digest_and_fetches_each_layer_once() {
    let registry = Registry::start(Auth::Anonymous, None);
    let mut layout = Layout::new();
    let app = Layer {
        tar: tar_layer("app/hello.txt", b"hello\n"),
        gzip: false,
    };
    let shared = Layer {
        tar: tar_layer("etc/motd", b"shared base\n"),
        gzip: true,
    };
    let extra = Layer {
        tar: tar_layer("opt/extra", b"only in v2\n"),
        gzip: true,
    };
    let run = json!({
        "Env": ["PATH=/usr/bin:/bin", "GREETING=hi there"],
        "WorkingDir": "/app", "User": "1000:1000",
        "Entrypoint": ["python3", "-m"], "Cmd": ["http.server", "8080"],
        "ExposedPorts": {"8080/tcp": {}, "53/udp": {}},
    });
    let v1 = layout.image("amd64", run, &[shared.clone_layer(), app.clone_layer()]);
    layout.tag("v1", &v1);
    let v2 = layout.image(
        "amd64",
        json!({}),
        &[shared.clone_layer(), extra.clone_layer()],
    );
    layout.tag("v2", &v2);
    registry.push(layout.dir.path(), "v1", "team/app", false);
    registry.push(layout.dir.path(), "v2", "team/app", false);

    let cache_dir = tempfile::tempdir().unwrap();
    let cache = BlobCache::new(cache_dir.path()).unwrap();
    let client = client(&registry, None);

    let image = client
        .pull(&reference(&registry, "team/app:v1"), &cache)
        .await
        .unwrap();
    assert_eq!(image.manifest_digest.to_string(), digest(&v1));
    let config = &image.config;
    assert_eq!(config.env, ["PATH=/usr/bin:/bin", "GREETING=hi there"]);
    assert_eq!(config.working_dir.as_deref(), Some("/app"));
    assert_eq!(config.user.as_deref(), Some("1000:1000"));
    assert_eq!(
        config.entrypoint.as_deref(),
        Some(&["python3".to_string(), "-m".to_string()][..])
    );
    assert_eq!(
        config.cmd.as_deref(),
        Some(&["http.server".to_string(), "8080".to_string()][..])
    );
    assert_eq!(config.exposed_ports, ["53/udp", "8080/tcp"]);
    let diff_ids: Vec<String> = config.diff_ids.iter().map(|d| d.to_string()).collect();
    assert_eq!(diff_ids, [digest_of(&shared.tar), digest_of(&app.tar)]);
    assert_eq!(image.layers.len(), 2);
    for (pulled, (layer, compression)) in image
        .layers
        .iter()
        .zip([(&shared, Compression::Gzip), (&app, Compression::None)])
    {
        assert!(pulled.downloaded);
        assert_eq!(pulled.compression, compression);
        assert_eq!(pulled.digest.to_string(), digest_of(&layer.blob()));
        assert_eq!(std::fs::read(&pulled.path).unwrap(), layer.blob());
    }

    // By digest, with the cache warm: the registry serves no layer again.
    let pinned = reference(&registry, &format!("team/app@{}", digest(&v1)));
    let again = client.pull(&pinned, &cache).await.unwrap();
    assert!(again.layers.iter().all(|l| !l.downloaded));
    assert_eq!(again.config, image.config);
    // v2 shares its base layer with v1: only its own layer is fetched.
    let other = client
        .pull(&reference(&registry, "team/app:v2"), &cache)
        .await
        .unwrap();
    let downloaded: Vec<bool> = other.layers.iter().map(|l| l.downloaded).collect();
    assert_eq!(downloaded, [false, true]);
    for layer in [&shared, &app, &extra] {
        let gets = registry.blob_gets("team/app", &digest_of(&layer.blob()));
        assert_eq!(gets, 1, "{}", registry.log());
    }

    // What is not there says so.
    let absent = format!("team/app@{}", digest_of(b"no such manifest"));
    for missing in ["team/app:v3", "team/none:v1", absent.as_str()] {
        let err = client
            .pull(&reference(&registry, missing), &cache)
            .await
            .unwrap_err();
        assert!(
            matches!(err, RegistryError::NotFound { .. }),
            "{missing}: {err}"
        );
        assert!(err.to_string().contains("not found"), "{err}");
    }
}

#[tokio::test]
async fn tampered_manifest_or_layer_is_refused_and_not_cached() {
    let registry = Registry::start(Auth::Anonymous, None);
    let mut layout = Layout::new();
    let layer = Layer {
        tar: tar_layer("bin/tool", &[7u8; 3000]),
        gzip: true,
    };
    let image = layout.image("amd64", json!({}), &[layer.clone_layer()]);
    layout.tag("v1", &image);
    registry.push(layout.dir.path(), "v1", "tamper", false);
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = BlobCache::new(cache_dir.path()).unwrap();
    let client = client(&registry, None);

    // Same length, other bytes: only the digest can tell.
    let layer_digest = digest_of(&layer.blob());
    let stored = registry.stored_blob(&layer_digest);
    let mut bytes = std::fs::read(&stored).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&stored, &bytes).unwrap();
    let err = client
        .pull(&reference(&registry, "tamper:v1"), &cache)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&layer_digest), "{err}");
    let left: Vec<_> = std::fs::read_dir(cache_dir.path().join("sha256"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "cache holds {left:?}");

    // A manifest must hash to the digest it is pinned by or announced as.
    let manifest = registry.stored_blob(&digest(&image));
    let mut bytes = std::fs::read(&manifest).unwrap();
    bytes.push(b' ');
    std::fs::write(&manifest, &bytes).unwrap();
    // By tag, against the digest the registry announces for it.
    let by_tag = reference(&registry, "tamper:v1");
    let pinned = reference(&registry, &format!("tamper@{}", digest(&image)));
    for wanted in [pinned, by_tag] {
        let err = client.pull(&wanted, &cache).await.unwrap_err();
        assert!(
            matches!(&err, RegistryError::DigestMismatch { what, .. } if what == "the manifest"),
            "{wanted}: {err}"
        );
    }
}

#[tokio::test]
async fn an_index_or_manifest_list_resolves_to_linux_amd64() {
    let registry = Registry::start(Auth::Anonymous, None);
    let mut layout = Layout::new();
    let arm = Layer {
        tar: tar_layer("arch", b"arm64\n"),
        gzip: true,
    };
    let amd = Layer {
        tar: tar_layer("arch", b"amd64\n"),
        gzip: true,
    };
    let arm_image = layout.image("arm64", json!({"Cmd": ["arm"]}), &[arm.clone_layer()]);
    let amd_image = layout.image("amd64", json!({"Cmd": ["amd"]}), &[amd.clone_layer()]);
    let index = layout.index(vec![arm_image, amd_image.clone()]);
    layout.tag("multi", &index);
    registry.push(layout.dir.path(), "multi", "multi", true);
    // The same, converted to a Docker manifest list of schema 2 manifests.
    registry.push_with(
        layout.dir.path(),
        "multi",
        "docker",
        &["--all", "--format=v2s2"],
    );
    let client = client(&registry, None);

    for repository in ["multi", "docker"] {
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::new(cache_dir.path()).unwrap();
        let wanted = reference(&registry, &format!("{repository}:multi"));
        // Two pulls of one image into one cache at once: both whole.
        let (first, second) =
            tokio::join!(client.pull(&wanted, &cache), client.pull(&wanted, &cache));
        for image in [first.unwrap(), second.unwrap()] {
            if repository == "multi" {
                assert_eq!(image.manifest_digest.to_string(), digest(&amd_image));
            }
            assert_eq!(image.config.cmd, Some(vec!["amd".to_string()]));
            assert_eq!(std::fs::read(&image.layers[0].path).unwrap(), amd.blob());
        }
        let files = std::fs::read_dir(cache_dir.path().join("sha256"))
            .unwrap()
            .count();
        assert_eq!(files, 1, "one layer, no partial download left");
    }
    let list = registry.raw_manifest("docker", "multi");
    assert_eq!(
        list["mediaType"],
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
    assert_eq!(
        list["manifests"][0]["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
}

#[tokio::test]
async fn a_registry_with_auth_takes_credentials_from_a_docker_config() {
    let registry = Registry::start(Auth::Htpasswd, None);
    let mut layout = Layout::new();
    let layer = Layer {
        tar: tar_layer("secret", b"private\n"),
        gzip: true,
    };
    let image = layout.image("amd64", json!({}), &[layer.clone_layer()]);
    layout.tag("v1", &image);
    registry.push(layout.dir.path(), "v1", "private/app", false);
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = BlobCache::new(cache_dir.path()).unwrap();
    let wanted = reference(&registry, "private/app:v1");

    let err = client(&registry, None)
        .pull(&wanted, &cache)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains("needs credentials"), "{err}");

    let docker_config = |password: &str| {
        let auth = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{password}", common::USER));
        let path = cache_dir.path().join(format!("config-{password}.json"));
        let body = json!({"auths": {registry.host(): {"auth": auth}}});
        std::fs::write(&path, body.to_string()).unwrap();
        path
    };
    let wrong = client(&registry, Some(docker_config("wrong")));
    let err = wrong.pull(&wanted, &cache).await.unwrap_err();
    assert!(err.to_string().contains("refused the credentials"), "{err}");
    assert!(
        !err.to_string().contains("wrong"),
        "the password leaks: {err}"
    );

    let right = client(&registry, Some(docker_config(common::PASSWORD)));
    let pulled = right.pull(&wanted, &cache).await.unwrap();
    assert_eq!(std::fs::read(&pulled.layers[0].path).unwrap(), layer.blob());
}

#[tokio::test]
async fn bearer_tokens_over_https_with_a_private_ca() {
    let pki = common::token::Pki::generate();
    let realm = common::token::serve_tokens(&pki);
    let token_host = url::Url::parse(&realm).unwrap().authority().to_string();
    let registry = Registry::start(Auth::Token { realm, pki: &pki }, Some(&pki));
    let mut layout = Layout::new();
    let layer = Layer {
        tar: tar_layer("data", b"tokens\n"),
        gzip: true,
    };
    let image = layout.image("amd64", json!({}), &[layer.clone_layer()]);
    layout.tag("v1", &image);
    registry.push(layout.dir.path(), "v1", "public/app", false);
    registry.push(layout.dir.path(), "v1", "private/app", false);
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = BlobCache::new(cache_dir.path()).unwrap();
    // The test's token service speaks plain HTTP: the one insecure host.
    let options = |docker_config: Option<std::path::PathBuf>| RegistryOptions {
        insecure_registries: vec![token_host.clone()],
        registry_ca: Some(pki.ca_cert.clone()),
        docker_config,
        private_registries: vec![registry.host()],
    };
    let anonymous = RegistryClient::new(&options(None), PullLimits::default()).unwrap();

    // Anonymous token, like any public image on Docker Hub or GHCR.
    let public = reference(&registry, "public/app:v1");
    let pulled = anonymous.pull(&public, &cache).await.unwrap();
    assert_eq!(std::fs::read(&pulled.layers[0].path).unwrap(), layer.blob());

    let private = reference(&registry, "private/app:v1");
    let err = anonymous.pull(&private, &cache).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains("needs credentials"), "{err}");

    let config = cache_dir.path().join("config.json");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        common::USER,
        common::PASSWORD
    ));
    let body = json!({"auths": {format!("https://{}", registry.host()): {"auth": auth}}});
    std::fs::write(&config, body.to_string()).unwrap();
    let with_credentials =
        RegistryClient::new(&options(Some(config)), PullLimits::default()).unwrap();
    let pulled = with_credentials.pull(&private, &cache).await.unwrap();
    assert_eq!(pulled.manifest_digest.to_string(), digest(&image));

    // A plain-HTTP realm not listed as insecure gets no credentials.
    let plain = RegistryOptions {
        insecure_registries: vec![],
        ..options(None)
    };
    let plain = RegistryClient::new(&plain, PullLimits::default()).unwrap();
    let err = plain.pull(&public, &cache).await.unwrap_err();
    assert!(err.to_string().contains("realm is not https"), "{err}");

    // Without the extra CA the registry's certificate is not trusted.
    let untrusting = RegistryOptions {
        private_registries: vec![registry.host()],
        ..RegistryOptions::default()
    };
    let untrusting = RegistryClient::new(&untrusting, PullLimits::default()).unwrap();
    let err = untrusting.pull(&public, &cache).await.unwrap_err();
    assert!(matches!(err, RegistryError::Http { .. }), "{err}");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");

    // A loopback registry no option names is never contacted.
    let requests = registry.log().matches("GET /v2/").count();
    let unguarded = RegistryClient::new(&RegistryOptions::default(), PullLimits::default())
        .unwrap()
        .pull(&public, &cache)
        .await
        .unwrap_err();
    assert!(
        matches!(unguarded, RegistryError::RefusedHost { .. }),
        "{unguarded}"
    );
    assert!(unguarded.to_string().contains("--private-registry"));
    assert_eq!(registry.log().matches("GET /v2/").count(), requests);
}
