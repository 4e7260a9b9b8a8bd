//! ARG, ENV and variable substitution, by Docker's rules.

use std::collections::BTreeMap;

use ember_dockerfile::{plan, BuildPlan, StepKind, MAX_ENVIRONMENT_BYTES};

fn build(text: &str) -> BuildPlan {
    plan(text, &BTreeMap::new()).unwrap()
}

fn build_with(text: &str, args: &[(&str, &str)]) -> BuildPlan {
    let args = args
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    plan(text, &args).unwrap()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn run_env(plan: &BuildPlan, step: usize) -> Vec<(String, String)> {
    match &plan.steps[step].kind {
        StepKind::Run { env, .. } => env.clone(),
        other => panic!("step {step} is {other:?}"),
    }
}

#[test]
fn env_key_value_and_legacy_forms() {
    let built = build(
        "FROM busybox\nENV A=1 B=\"two words\" C='single $quoted' D=e\\ f\nENV LEGACY value with   spaces\nENV E=\"\"\n",
    );
    assert_eq!(
        built.config.env,
        pairs(&[
            ("A", "1"),
            ("B", "two words"),
            ("C", "single $quoted"),
            ("D", "e f"),
            ("LEGACY", "value with   spaces"),
            ("E", ""),
        ])
    );
}

#[test]
fn later_env_replaces_in_place_and_sees_earlier_values_only() {
    let built = build("FROM busybox\nENV A=1 B=2\nENV A=new C=$A\nENV PATH=/app/bin:$PATH\n");
    // C takes A's value from before its own instruction, as in Docker.
    assert_eq!(
        built.config.env,
        pairs(&[("A", "new"), ("B", "2"), ("C", "1"), ("PATH", "/app/bin:")])
    );
}

#[test]
fn substitution_forms() {
    let built = build(
        "FROM busybox\nENV SET=yes EMPTY=\nENV R1=${SET} R2=$SET R3=${UNSET:-dflt} R4=${EMPTY:-dflt} R5=${SET:+alt} R6=${UNSET:+alt} R7=\\$SET R8=\"$SET\" R9='$SET' R10=${SET}x$SET\n",
    );
    let value = |k: &str| {
        built
            .config
            .env
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(value("R1"), "yes");
    assert_eq!(value("R2"), "yes");
    assert_eq!(value("R3"), "dflt");
    assert_eq!(value("R4"), "dflt");
    assert_eq!(value("R5"), "alt");
    assert_eq!(value("R6"), "");
    assert_eq!(value("R7"), "$SET");
    assert_eq!(value("R8"), "yes");
    assert_eq!(value("R9"), "$SET");
    assert_eq!(value("R10"), "yesxyes");
}

#[test]
fn arg_before_from_is_visible_to_from_only() {
    let built = build("ARG BASE=busybox\nARG TAG=1.36\nFROM ${BASE}:$TAG\nENV SEEN=\"[$TAG]\"\n");
    assert_eq!(built.base.name, "busybox");
    assert_eq!(built.base.version.as_deref(), Some("1.36"));
    assert_eq!(built.base.line, 3);
    assert_eq!(built.config.env, pairs(&[("SEEN", "[]")]));
}

#[test]
fn arg_redeclared_in_the_stage_takes_the_global_value() {
    let built = build("ARG TAG=1.36\nFROM busybox:$TAG\nARG TAG\nENV SEEN=$TAG\n");
    assert_eq!(built.config.env, pairs(&[("SEEN", "1.36")]));
}

#[test]
fn build_args_override_defaults() {
    let text =
        "ARG TAG=1.36\nFROM busybox:$TAG\nARG TAG\nARG MODE=debug\nARG NODEFAULT\nRUN make\n";
    let built = build_with(
        text,
        &[("TAG", "1.37"), ("MODE", "release"), ("NODEFAULT", "x")],
    );
    assert_eq!(built.base.version.as_deref(), Some("1.37"));
    assert_eq!(
        run_env(&built, 0),
        pairs(&[("TAG", "1.37"), ("MODE", "release"), ("NODEFAULT", "x")])
    );
    assert!(built.warnings.is_empty(), "{:?}", built.warnings);

    let defaults = build(text);
    assert_eq!(defaults.base.version.as_deref(), Some("1.36"));
    // An ARG with neither default nor build arg is unset, so RUN does not see it.
    assert_eq!(
        run_env(&defaults, 0),
        pairs(&[("TAG", "1.36"), ("MODE", "debug")])
    );
}

#[test]
fn undeclared_build_args_are_ignored_with_a_warning() {
    let built = build_with("FROM busybox\nRUN env\n", &[("NOT_DECLARED", "1")]);
    assert!(run_env(&built, 0).is_empty());
    assert!(
        built.warnings.iter().any(|w| w.contains("NOT_DECLARED")),
        "{:?}",
        built.warnings
    );
}

#[test]
fn args_reach_run_but_not_the_image_and_env_wins() {
    let built = build(
        "FROM busybox\nARG VERSION=1.0\nARG SHARED=from-arg\nENV SHARED=from-env\nRUN echo $VERSION\nENV LATER=$VERSION\n",
    );
    assert_eq!(
        run_env(&built, 0),
        pairs(&[("SHARED", "from-env"), ("VERSION", "1.0")])
    );
    assert_eq!(
        built.config.env,
        pairs(&[("SHARED", "from-env"), ("LATER", "1.0")])
    );
}

#[test]
fn run_cmd_and_entrypoint_are_left_to_the_shell() {
    let built = build("FROM busybox\nENV NAME=x\nRUN echo $NAME ${NAME:-y}\nCMD echo $NAME\nENTRYPOINT [\"/bin/echo\", \"$NAME\"]\n");
    let StepKind::Run { argv, .. } = &built.steps[0].kind else {
        panic!()
    };
    assert_eq!(argv, &["/bin/sh", "-c", "echo $NAME ${NAME:-y}"]);
    assert_eq!(built.steps[0].instruction, "RUN echo $NAME ${NAME:-y}");
    assert_eq!(
        built.config.cmd.as_deref().unwrap(),
        ["/bin/sh", "-c", "echo $NAME"]
    );
    assert_eq!(
        built.config.entrypoint.as_deref().unwrap(),
        ["/bin/echo", "$NAME"]
    );
}

#[test]
fn substitution_in_other_instructions() {
    let built = build(
        "FROM busybox\nARG APP=svc\nARG PORT=8080\nENV HOME_DIR=/srv/$APP\nWORKDIR $HOME_DIR\nUSER ${APP}:${APP}\nCOPY --chown=$APP ${APP}.conf ./\nEXPOSE $PORT ${PORT}/udp\nLABEL app=$APP \"version\"=\"${VER:-0}\"\nSTOPSIGNAL ${SIG:-SIGINT}\n",
    );
    assert_eq!(built.config.workdir, "/srv/svc");
    assert_eq!(built.config.user.as_deref(), Some("svc:svc"));
    assert_eq!(built.config.exposed_ports, [8080]);
    assert_eq!(
        built.config.labels.get("app").map(String::as_str),
        Some("svc")
    );
    assert_eq!(
        built.config.labels.get("version").map(String::as_str),
        Some("0")
    );
    assert_eq!(built.config.stop_signal.as_deref(), Some("SIGINT"));
    let StepKind::Copy {
        sources,
        dest,
        chown,
        ..
    } = &built.steps[1].kind
    else {
        panic!()
    };
    assert_eq!(sources, &["svc.conf"]);
    assert_eq!(dest, "/srv/svc/");
    assert_eq!(chown.as_deref(), Some("svc"));
    assert_eq!(
        built.steps[1].instruction,
        "COPY --chown=svc svc.conf /srv/svc/"
    );
}

#[test]
fn arg_defaults_are_substituted() {
    let built = build("FROM busybox\nARG A=1\nARG B=${A}-x C=$A\nRUN true\n");
    assert_eq!(
        run_env(&built, 0),
        pairs(&[("A", "1"), ("B", "1-x"), ("C", "1")])
    );
}

#[test]
fn substitution_errors_name_the_line() {
    let err = plan(
        "FROM busybox\nENV A=1\nWORKDIR ${UNSET:?is required}\n",
        &BTreeMap::new(),
    )
    .unwrap_err();
    assert_eq!(err.line, Some(3));
    assert!(err.message.contains("UNSET: is required"), "{err}");
    let err = plan("FROM busybox\nUSER \"app\n", &BTreeMap::new()).unwrap_err();
    assert_eq!(err.line, Some(2));
    assert!(err.message.starts_with("USER:"), "{err}");
}

#[test]
fn growth_by_substitution_is_bounded() {
    // Each line doubles A; without bounds this asks for 2^40 bytes.
    let text = format!(
        "FROM busybox\nENV A=0123456789abcdef\n{}",
        "ENV A=$A$A\n".repeat(40)
    );
    let err = plan(&text, &BTreeMap::new()).unwrap_err();
    assert!(err.line.is_some());
    assert!(err.message.contains("bytes"), "{err}");
    let many = format!(
        "FROM busybox\n{}",
        (0..100)
            .map(|i| format!("ENV V{i}={}\n", "x".repeat(MAX_ENVIRONMENT_BYTES / 50)))
            .collect::<String>()
    );
    assert!(plan(&many, &BTreeMap::new())
        .unwrap_err()
        .message
        .contains("ENV and ARG"));
}

#[test]
fn build_args_are_bounded_and_checked() {
    let mut args = BTreeMap::new();
    args.insert("BAD=NAME".to_string(), "x".to_string());
    assert!(plan("FROM busybox\n", &args).is_err());
    let too_many: BTreeMap<String, String> = (0..1000)
        .map(|i| (format!("A{i}"), String::new()))
        .collect();
    assert!(plan("FROM busybox\n", &too_many).is_err());
}
