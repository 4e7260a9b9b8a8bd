//! The build plan: steps, paths, and the image configuration.

use std::collections::BTreeMap;

use ember_dockerfile::{plan, BuildPlan, ImageConfig, StepKind};

fn build(text: &str) -> BuildPlan {
    plan(text, &BTreeMap::new()).unwrap()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn command(body: &str) -> Option<Vec<String>> {
    build(&format!("FROM busybox\n{body}")).config.command()
}

#[test]
fn cmd_and_entrypoint_combine_as_in_docker() {
    // No ENTRYPOINT, no CMD: nothing to run (the base image decides).
    assert_eq!(command(""), None);
    // CMD alone, either form.
    assert_eq!(
        command("CMD [\"app\", \"-v\"]\n"),
        Some(strings(&["app", "-v"]))
    );
    assert_eq!(
        command("CMD app -v\n"),
        Some(strings(&["/bin/sh", "-c", "app -v"]))
    );
    // Exec ENTRYPOINT alone, and with CMD appended (exec or shell form).
    assert_eq!(command("ENTRYPOINT [\"ep\"]\n"), Some(strings(&["ep"])));
    assert_eq!(
        command("ENTRYPOINT [\"ep\", \"e1\"]\nCMD [\"c1\"]\n"),
        Some(strings(&["ep", "e1", "c1"]))
    );
    assert_eq!(
        command("ENTRYPOINT [\"ep\"]\nCMD c1 c2\n"),
        Some(strings(&["ep", "/bin/sh", "-c", "c1 c2"]))
    );
    // Shell ENTRYPOINT: CMD words only become the shell's $0..., unused.
    assert_eq!(
        command("ENTRYPOINT ep e1\nCMD [\"c1\"]\n"),
        Some(strings(&["/bin/sh", "-c", "ep e1", "c1"]))
    );
    // Within one Dockerfile, an ENTRYPOINT after a CMD keeps the CMD.
    assert_eq!(
        command("CMD [\"c1\"]\nENTRYPOINT [\"ep\"]\n"),
        Some(strings(&["ep", "c1"]))
    );
    // The last CMD and ENTRYPOINT win.
    assert_eq!(
        command("CMD [\"old\"]\nENTRYPOINT [\"e0\"]\nCMD [\"new\"]\nENTRYPOINT [\"e1\"]\n"),
        Some(strings(&["e1", "new"]))
    );
    // An empty exec form clears.
    assert_eq!(command("CMD []\n"), None);
}

#[test]
fn entrypoint_without_cmd_leaves_cmd_unset() {
    let config = build("FROM busybox\nENTRYPOINT [\"ep\"]\n").config;
    assert_eq!(config.cmd, None);
    assert_eq!(config.entrypoint, Some(strings(&["ep"])));
}

#[test]
fn shell_form_uses_the_shell_in_force() {
    let built = build(
        "FROM debian12-minimal\nRUN echo one\nSHELL [\"/bin/bash\", \"-o\", \"pipefail\", \"-c\"]\nRUN echo two | cat\nCMD serve\n",
    );
    let argv = |i: usize| match &built.steps[i].kind {
        StepKind::Run { argv, .. } => argv.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(argv(0), strings(&["/bin/sh", "-c", "echo one"]));
    assert_eq!(
        argv(1),
        strings(&["/bin/bash", "-o", "pipefail", "-c", "echo two | cat"])
    );
    assert_eq!(
        built.config.cmd,
        Some(strings(&["/bin/bash", "-o", "pipefail", "-c", "serve"]))
    );
    assert_eq!(
        built.config.shell,
        strings(&["/bin/bash", "-o", "pipefail", "-c"])
    );
}

#[test]
fn workdir_resolves_against_the_previous_one() {
    let built = build("FROM busybox\nWORKDIR app\nWORKDIR src/../lib/./x\nWORKDIR ../..\nWORKDIR ../../../..\nWORKDIR /opt//tool/\n");
    let paths: Vec<&str> = built
        .steps
        .iter()
        .map(|s| match &s.kind {
            StepKind::Workdir { path, .. } => path.as_str(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(paths, ["/app", "/app/lib/x", "/app", "/", "/opt/tool"]);
    assert_eq!(built.config.workdir, "/opt/tool");
    assert_eq!(build("FROM busybox\n").config.workdir, "/");
}

#[test]
fn workdir_is_created_as_the_current_user() {
    let built = build("FROM busybox\nWORKDIR /a\nUSER app\nWORKDIR /b\nRUN id\n");
    assert_eq!(
        built.steps[0].kind,
        StepKind::Workdir {
            path: "/a".into(),
            user: None
        }
    );
    assert_eq!(
        built.steps[1].kind,
        StepKind::Workdir {
            path: "/b".into(),
            user: Some("app".into())
        }
    );
    let StepKind::Run { workdir, user, .. } = &built.steps[2].kind else {
        panic!()
    };
    assert_eq!((workdir.as_str(), user.as_deref()), ("/b", Some("app")));
}

#[test]
fn copy_destinations_resolve_against_workdir() {
    let built = build(
        "FROM busybox\nCOPY a /abs\nWORKDIR /srv\nCOPY a rel\nCOPY a dir/\nCOPY a .\nCOPY a b ./sub/\nADD site.tar ../www/\nCOPY [\"my file\", \"dest dir/\"]\n",
    );
    let copies: Vec<(Vec<String>, String, bool)> = built
        .steps
        .iter()
        .filter_map(|s| match &s.kind {
            StepKind::Copy {
                sources,
                dest,
                extract_archives,
                ..
            } => Some((sources.clone(), dest.clone(), *extract_archives)),
            _ => None,
        })
        .collect();
    assert_eq!(copies[0].1, "/abs");
    assert_eq!(copies[1].1, "/srv/rel");
    assert_eq!(copies[2].1, "/srv/dir/");
    assert_eq!(copies[3].1, "/srv/");
    assert_eq!(
        (copies[4].0.clone(), copies[4].1.as_str()),
        (strings(&["a", "b"]), "/srv/sub/")
    );
    assert_eq!((copies[5].1.as_str(), copies[5].2), ("/www/", true));
    assert_eq!(copies[6].1, "/srv/dest dir/");
    assert_eq!(
        built.steps.last().unwrap().instruction,
        "COPY [\"my file\",\"/srv/dest dir/\"]"
    );
}

#[test]
fn copy_sources_are_checked() {
    let err = |text: &str| plan(text, &BTreeMap::new()).unwrap_err();
    let e = err("FROM busybox\nCOPY a b /dest\n");
    assert_eq!(e.line, Some(2));
    assert!(e.message.contains("ending in '/'"), "{e}");
    let e = err("FROM busybox\n\nCOPY ../secret /x\n");
    assert_eq!(e.line, Some(3));
    assert!(e.message.contains("outside the build context"), "{e}");
    let e = err("FROM busybox\nARG U=http://x/y.tgz\nADD $U /opt/\n");
    assert_eq!(e.line, Some(3));
    assert!(e.message.contains("ADD from a URL is not supported"), "{e}");
    let e = err("FROM busybox\nCOPY --chown=a:b:c x /y\n");
    assert!(e.message.contains("--chown"), "{e}");
}

#[test]
fn exposed_ports_keep_order_without_duplicates() {
    let config = build("FROM busybox\nEXPOSE 8080 80/tcp\nEXPOSE 53/udp 80/udp 8080\n").config;
    assert_eq!(config.exposed_ports, [8080, 80, 53]);
    for bad in ["0", "65536", "80/icmp", "8000-8010", "http"] {
        let e = plan(&format!("FROM busybox\nEXPOSE {bad}\n"), &BTreeMap::new()).unwrap_err();
        assert_eq!(e.line, Some(2), "{bad}: {e}");
    }
}

#[test]
fn labels_user_stopsignal_and_maintainer() {
    let built = build(
        "FROM busybox\nMAINTAINER someone <a@b.c>\nLABEL a=1 \"b c\"=\"d e\"\nLABEL a=2\nLABEL legacy form value\nUSER 1000:1000\nSTOPSIGNAL SIGQUIT\n",
    );
    let labels: Vec<(&str, &str)> = built
        .config
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        labels,
        [("a", "2"), ("b c", "d e"), ("legacy", "form value")]
    );
    assert_eq!(built.config.user.as_deref(), Some("1000:1000"));
    assert_eq!(built.config.stop_signal.as_deref(), Some("SIGQUIT"));
    assert!(built.warnings.iter().any(|w| w.contains("MAINTAINER")));
    assert!(built.steps.is_empty());
    let e = plan("FROM busybox\nSTOPSIGNAL sig term\n", &BTreeMap::new()).unwrap_err();
    assert_eq!(e.line, Some(2));
}

#[test]
fn the_plan_round_trips_through_json() {
    let built =
        build("FROM busybox:1.36\nENV A=1\nWORKDIR /app\nCOPY . .\nRUN make\nCMD [\"./app\"]\n");
    let json = serde_json::to_string(&built).unwrap();
    let back: BuildPlan = serde_json::from_str(&json).unwrap();
    assert_eq!(back, built);
    assert_eq!(ImageConfig::default().shell, strings(&["/bin/sh", "-c"]));
}
