//! Builds real images in real build VMs and checks the result by booting
//! the snapshot: Dockerfile semantics as a user would notice them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ember_artifact::ArtifactSource;
use ember_assets::AssetStore;
use ember_builder::{BuildLog, BuildSpec, Builder, BuilderConfig, ImageHooks};
use ember_vmm::qemu::{QemuConfig, QemuHypervisor};
use ember_vmm::{Hypervisor, Network, RestoreMemory, RestoreOptions};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Env {
    hv: Arc<dyn Hypervisor>,
    builder: Builder,
    base: ember_builder::BaseRootfs,
    dir: tempfile::TempDir,
}

async fn env() -> Env {
    let agent = std::env::var_os("EMBER_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            workspace_root().join("target/x86_64-unknown-linux-gnu/guest/ember-agent")
        });
    assert!(
        agent.is_file(),
        "guest agent not built at {} — run `make test`",
        agent.display()
    );
    let assets = AssetStore::new(
        std::env::var_os("EMBER_ASSETS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("build/assets")),
    );
    let (guest, base) = tokio::task::spawn_blocking(move || {
        let guest = assets.ensure_guest(&agent).expect("guest assets");
        let base =
            ember_builder::bases::ensure(&assets, ember_builder::bases::find("busybox").unwrap())
                .expect("busybox base");
        (guest, base)
    })
    .await
    .unwrap();
    let dir = tempfile::Builder::new()
        .prefix("ember-b")
        .tempdir_in("/tmp")
        .unwrap();
    let mut qemu = QemuConfig::new(dir.path().join("vms"));
    if let Ok(a) = std::env::var("EMBER_ACCEL") {
        qemu.accel = a.parse().unwrap();
    }
    let hv: Arc<dyn Hypervisor> = Arc::new(QemuHypervisor::new(qemu).await.unwrap());
    let builder = Builder::new(
        Arc::clone(&hv),
        BuilderConfig {
            kernel: guest.kernel,
            initramfs: guest.initramfs,
            guest_version: "test".into(),
            cache_dir: dir.path().join("cache"),
            build_memory_mib: 512,
            build_vcpus: 1,
            limits: Default::default(),
            timeout: Duration::from_secs(600),
        },
    )
    .unwrap();
    Env {
        hv,
        builder,
        base,
        dir,
    }
}

impl Env {
    fn spec(&self, id: &str, context: &Path) -> BuildSpec {
        BuildSpec {
            id: id.into(),
            artifact: ArtifactSource::Directory(context.to_path_buf()),
            base: self.base.clone(),
            egress: false,
            environment: vec![("FROM_REQUEST".into(), "yes".into())],
            hooks: ImageHooks::default(),
            memory_mib: 256,
            work_dir: self.dir.path().join(format!("work-{id}")),
            output_dir: self.dir.path().join(format!("out-{id}")),
        }
    }

    fn log(&self, id: &str) -> BuildLog {
        BuildLog::create(&self.dir.path().join(format!("{id}.log"))).unwrap()
    }

    /// VM runtime folders still present (each running VM has one).
    fn vm_dirs(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("vms/vms"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

const DOCKERFILE: &str = r#"
# Exercises the instructions users rely on.
ARG GREETING=hello
FROM busybox
ARG GREETING
ENV APP_HOME=/srv/app \
    MODE=test
RUN echo 'app:x:1234:1234::/home/app:/bin/sh' >> /etc/passwd \
 && echo 'app:x:1234:' >> /etc/group \
 && mkdir -p /home/app && chown 1234:1234 /home/app
USER app
WORKDIR $APP_HOME
COPY --chown=app:app data/ ./data/
ADD bundle.tar.gz /opt/
COPY *.txt /etc/notes/
RUN echo "$GREETING from $(id -u) in $(pwd), mode $MODE" > greeting
EXPOSE 8080
CMD ["/bin/sh", "-c", "echo app env: $MODE $FROM_REQUEST; exec httpd -f -p 8080 -h /srv/app"]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn dockerfile_instructions_shape_the_snapshot() {
    let env = env().await;
    let ctx = tempfile::tempdir().unwrap();
    write(ctx.path(), "Dockerfile", DOCKERFILE);
    write(ctx.path(), "data/x.txt", "data file\n");
    write(ctx.path(), "a.txt", "note a\n");
    write(ctx.path(), "b.txt", "note b\n");
    write(ctx.path(), "bundle/inner.txt", "from the tarball\n");
    let status = std::process::Command::new("tar")
        .args(["-czf", "bundle.tar.gz", "bundle"])
        .current_dir(ctx.path())
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::remove_dir_all(ctx.path().join("bundle")).unwrap();

    let spec = env.spec("features", ctx.path());
    let log = env.log("features");
    let out = match env.builder.build(&spec, &log).await {
        Ok(out) => out,
        Err(e) => panic!("build failed: {}", e.reason()),
    };
    assert_eq!(out.steps, 6);
    assert!(out.memory_bytes > 0 && out.disk_bytes > 0);
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert!(text.contains("step 6/6 RUN echo"), "{text}");
    assert_eq!(env.vm_dirs(), 0, "no build or image VM is left running");

    // The snapshot holds the running app: restore it and look inside.
    let vm = env
        .hv
        .restore("check", &out.snapshot_dir, RestoreOptions::default())
        .await
        .unwrap();
    let sh = |s: &'static str| {
        let vm = Arc::clone(&vm);
        async move {
            let o = vm.agent().sh(s).await.unwrap();
            assert!(o.success(), "{s}: {}", o.stderr_str());
            o.stdout_str().trim().to_string()
        }
    };
    assert_eq!(
        sh("cat /srv/app/greeting").await,
        "hello from 1234 in /srv/app, mode test"
    );
    assert_eq!(
        sh("stat -c %u:%g /srv/app/data /srv/app/data/x.txt").await,
        "1234:1234\n1234:1234"
    );
    assert_eq!(sh("cat /opt/bundle/inner.txt").await, "from the tarball");
    assert_eq!(
        sh("cat /etc/notes/a.txt /etc/notes/b.txt").await,
        "note a\nnote b"
    );
    assert_eq!(
        sh("stat -c %u /proc/$(pidof httpd)").await,
        "1234",
        "USER applies to the app"
    );
    assert!(sh("cat /var/log/ember-app.log")
        .await
        .contains("app env: test yes"));
    let answer = ember_builder::guest_http::request(
        vm.agent(),
        8080,
        "GET",
        "/greeting",
        Default::default(),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 200);
    assert!(String::from_utf8_lossy(&answer.body).contains("hello from 1234"));
    vm.stop().await.unwrap();

    // Unchanged: everything comes from the cache, no VM boots.
    let again = env
        .builder
        .build(&env.spec("again", ctx.path()), &env.log("again"))
        .await
        .unwrap();
    assert_eq!((again.cached_steps, again.snapshot_reused), (6, true));
    // A changed file re-runs the build from the step that copies it; the
    // layers below come from the cache and the result is whole.
    write(ctx.path(), "a.txt", "note a, edited\n");
    let changed = env
        .builder
        .build(&env.spec("changed", ctx.path()), &env.log("changed"))
        .await
        .unwrap();
    assert_eq!((changed.cached_steps, changed.snapshot_reused), (4, false));
    let vm = env
        .hv
        .restore("check2", &changed.snapshot_dir, RestoreOptions::default())
        .await
        .unwrap();
    let out = vm
        .agent()
        .sh("cat /etc/notes/a.txt /srv/app/greeting /opt/bundle/inner.txt")
        .await
        .unwrap();
    assert_eq!(
        out.stdout_str(),
        "note a, edited\nhello from 1234 in /srv/app, mode test\nfrom the tarball\n"
    );
    vm.stop().await.unwrap();
    assert_eq!(env.vm_dirs(), 0);
}

const MULTI_STAGE: &str = r#"
FROM busybox AS build
WORKDIR /work
RUN mkdir -p out/sub && echo "built in $(pwd)" > out/sub/made.txt && echo tool > /tool
FROM busybox AS unused
RUN echo this stage is not needed; exit 1
FROM busybox
COPY --from=build /work/out /app/
COPY --from=0 --chown=1:1 /tool /usr/local/bin/tool
CMD ["sleep", "600"]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_multi_stage_build_copies_from_an_earlier_stage() {
    let env = env().await;
    let ctx = tempfile::tempdir().unwrap();
    write(ctx.path(), "Dockerfile", MULTI_STAGE);
    let spec = env.spec("stages", ctx.path());
    let log = env.log("stages");
    let out = match env.builder.build(&spec, &log).await {
        Ok(out) => out,
        Err(e) => panic!("build failed: {}", e.reason()),
    };
    // The stage nothing uses is not built (its RUN would fail).
    assert_eq!(out.steps, 4);
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert!(text.contains("stage 1 (unused) skipped"), "{text}");
    assert_eq!(env.vm_dirs(), 0, "no stage's VM is left running");
    assert!(!spec.work_dir.exists(), "the exported files are gone");

    let vm = env
        .hv
        .restore("check-stages", &out.snapshot_dir, RestoreOptions::default())
        .await
        .unwrap();
    let o = vm
        .agent()
        .sh(
            "cat /app/sub/made.txt /usr/local/bin/tool; stat -c %u:%g /usr/local/bin/tool; \
             test -e /work || echo no-work; test -e /tool || echo no-tool",
        )
        .await
        .unwrap();
    assert!(o.success(), "{}", o.stderr_str());
    assert_eq!(
        o.stdout_str(),
        "built in /work\ntool\n1:1\nno-work\nno-tool\n",
        "the directory's contents and the file are copied, the stage's other files are not"
    );
    vm.stop().await.unwrap();

    // Unchanged: every stage's steps come from the cache.
    let again = env
        .builder
        .build(
            &env.spec("stages-again", ctx.path()),
            &env.log("stages-again"),
        )
        .await
        .unwrap();
    assert_eq!((again.cached_steps, again.snapshot_reused), (4, true));
    // A changed source stage invalidates the COPY --from steps built on it.
    write(
        ctx.path(),
        "Dockerfile",
        &MULTI_STAGE.replace("built in", "rebuilt in"),
    );
    let changed = env
        .builder
        .build(
            &env.spec("stages-changed", ctx.path()),
            &env.log("stages-changed"),
        )
        .await
        .unwrap();
    assert_eq!((changed.cached_steps, changed.snapshot_reused), (1, false));
    let vm = env
        .hv
        .restore(
            "check-stages2",
            &changed.snapshot_dir,
            RestoreOptions::default(),
        )
        .await
        .unwrap();
    let o = vm.agent().sh("cat /app/sub/made.txt").await.unwrap();
    assert_eq!(o.stdout_str(), "rebuilt in /work\n");
    vm.stop().await.unwrap();
    assert_eq!(env.vm_dirs(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_step_names_itself_and_leaves_nothing() {
    let env = env().await;
    let ctx = tempfile::tempdir().unwrap();
    write(
        ctx.path(),
        "Dockerfile",
        "FROM busybox\nRUN echo preparing\nRUN echo boom >&2; exit 3\nCMD [\"true\"]\n",
    );
    let spec = env.spec("fails", ctx.path());
    let err = env
        .builder
        .build(&spec, &env.log("fails"))
        .await
        .unwrap_err();
    let reason = err.reason();
    assert!(reason.contains("step 2/2 (Dockerfile line 3)"), "{reason}");
    assert!(reason.contains("exited with code 3"), "{reason}");
    assert!(
        reason.contains("boom"),
        "the log tail is in the reason: {reason}"
    );
    assert!(!spec.output_dir.exists());
    assert!(!spec.work_dir.exists());
    assert_eq!(env.vm_dirs(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_that_never_listens_fails_readiness_with_its_output() {
    let env = env().await;
    let ctx = tempfile::tempdir().unwrap();
    write(
        ctx.path(),
        "Dockerfile",
        "FROM busybox\nEXPOSE 9999\nCMD [\"/bin/sh\", \"-c\", \"echo cannot bind; exit 7\"]\n",
    );
    let spec = env.spec("noready", ctx.path());
    let err = env
        .builder
        .build(&spec, &env.log("noready"))
        .await
        .unwrap_err();
    let reason = err.reason();
    assert!(reason.contains("the app exited with code 7"), "{reason}");
    assert!(
        reason.contains("cannot bind"),
        "the app's own output: {reason}"
    );
    assert!(!spec.output_dir.exists());
    assert_eq!(env.vm_dirs(), 0);
}

/// A hook listener in busybox sh at the service's paths: `ready` answers
/// 503 twice, then 200; `validate` answers `$VALIDATE_STATUS` (from the
/// request's environment). Anything else is a 404, so a wrong path fails
/// the build.
const HOOK_SH: &str = r#"#!/bin/sh
read -r method path proto
while read -r line; do [ -z "$(printf %s "$line" | tr -d '\r')" ] && break; done
case "$path" in
/aws/lambda-microvms/runtime/v1/ready) n=$(cat /tmp/ready-calls 2>/dev/null || echo 0); n=$((n + 1)); echo $n > /tmp/ready-calls
        if [ "$n" -ge 3 ]; then code="200 OK"; else code="503 Not Ready"; fi ;;
/aws/lambda-microvms/runtime/v1/validate) echo "$method" > /tmp/validated; code="${VALIDATE_STATUS:-200} Validated" ;;
*) code="404 Not Found" ;;
esac
printf 'HTTP/1.1 %s\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok' "$code"
"#;

fn hooks_context() -> tempfile::TempDir {
    let ctx = tempfile::tempdir().unwrap();
    write(
        ctx.path(),
        "Dockerfile",
        "FROM busybox\nCOPY hook.sh /app/\nRUN chmod 755 /app/hook.sh\n\
         CMD [\"nc\", \"-ll\", \"-p\", \"9000\", \"-e\", \"/app/hook.sh\"]\n",
    );
    write(ctx.path(), "hook.sh", HOOK_SH);
    ctx
}

fn with_hooks(mut spec: BuildSpec, validate_status: &str) -> BuildSpec {
    spec.hooks = ImageHooks {
        port: Some(9000),
        ready: Some(Duration::from_secs(60)),
        ready_timeout: Some(Duration::from_secs(60)),
        validate: Some(Duration::from_secs(20)),
    };
    spec.environment = vec![("VALIDATE_STATUS".into(), validate_status.into())];
    spec
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_and_validate_hooks_gate_the_snapshot() {
    let env = env().await;
    let ctx = hooks_context();
    let spec = with_hooks(env.spec("hooks", ctx.path()), "200");
    let out = match env.builder.build(&spec, &env.log("hooks")).await {
        Ok(out) => out,
        Err(e) => panic!("build failed: {}", e.reason()),
    };
    let vm = env
        .hv
        .restore("hooks-check", &out.snapshot_dir, RestoreOptions::default())
        .await
        .unwrap();
    let o = vm
        .agent()
        .sh("cat /tmp/ready-calls /tmp/validated")
        .await
        .unwrap();
    assert_eq!(
        o.stdout_str(),
        "3\nPOST\n",
        "polled until 200, then validated"
    );
    vm.stop().await.unwrap();

    let failing = with_hooks(env.spec("hooks-bad", ctx.path()), "500");
    let err = env
        .builder
        .build(&failing, &env.log("hooks-bad"))
        .await
        .unwrap_err();
    let reason = err.reason();
    assert!(reason.starts_with("validate hook"), "{reason}");
    assert!(
        reason.contains("Validate hook check failed: the application returned a server error (HTTP 5xx) response (HTTP 500"),
        "{reason}"
    );
    assert!(!failing.output_dir.exists());
    assert_eq!(env.vm_dirs(), 0);
}

/// The image VM has a network card plugged into nothing: its snapshot
/// restores isolated by default, and with internet when asked.
#[tokio::test(flavor = "multi_thread")]
async fn an_image_snapshot_restores_isolated_or_with_internet() {
    let env = env().await;
    let ctx = tempfile::tempdir().unwrap();
    write(
        ctx.path(),
        "Dockerfile",
        "FROM busybox\nCMD [\"sleep\", \"1000000\"]\n",
    );
    let spec = env.spec("online", ctx.path());
    let out = match env.builder.build(&spec, &env.log("online")).await {
        Ok(out) => out,
        Err(e) => panic!("build failed: {}", e.reason()),
    };
    let manifest = ember_vmm::SnapshotManifest::load(&out.snapshot_dir).unwrap();
    assert_eq!(manifest.vm.network, Network::Isolated);

    let vm = env
        .hv
        .restore(
            "online-check",
            &out.snapshot_dir,
            RestoreOptions {
                memory: RestoreMemory::Clone,
                network: Some(Network::Internet),
                ..RestoreOptions::default()
            },
        )
        .await
        .unwrap();
    // Retried: a slow TCG guest or a slow mirror may need a second go.
    // `timeout`, not wget's -T, which crashes busybox 1.35's wget.
    let o = vm
        .agent()
        .sh("cat /etc/resolv.conf; for i in 1 2 3; do \
               timeout 30 wget -q -O - http://deb.debian.org/debian/dists/bookworm/Release \
               | head -c 100 | grep Origin && exit 0; sleep 1; done; exit 1")
        .await
        .unwrap();
    let text = o.stdout_str();
    assert!(o.success(), "{text}\n{}", o.stderr_str());
    assert!(text.contains("nameserver 10.0.2.3"), "{text}");
    assert!(text.contains("Origin: Debian"), "{text}");
    vm.stop().await.unwrap();
    assert_eq!(env.vm_dirs(), 0);
}
