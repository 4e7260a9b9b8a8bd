//! Parsing: what Ember reads from a Dockerfile's text, and what it refuses
//! (always naming the line).

use std::collections::BTreeMap;

use ember_dockerfile::{
    parse, plan, CommandForm, DockerfileError, InstructionKind, MAX_DOCKERFILE_BYTES,
    MAX_INSTRUCTIONS, MAX_LINE_BYTES,
};

fn kinds(text: &str) -> Vec<InstructionKind> {
    parse(text)
        .unwrap()
        .instructions
        .into_iter()
        .map(|i| i.kind)
        .collect()
}

fn error(text: &str) -> DockerfileError {
    plan(text, &BTreeMap::new()).unwrap_err()
}

#[track_caller]
fn assert_error(text: &str, line: usize, needle: &str) {
    let err = error(text);
    assert_eq!(err.line, Some(line), "{err}");
    assert!(
        err.message.contains(needle),
        "{err:?} should mention {needle:?}"
    );
    assert!(err
        .to_string()
        .starts_with(&format!("Dockerfile line {line}: ")));
}

#[test]
fn comments_blank_lines_and_case_are_ignored() {
    let text =
        "# a comment\n\n   # indented comment\nfrom busybox\n\n  run echo hi\nCmd [\"sh\"]\n";
    let parsed = parse(text).unwrap();
    let lines: Vec<usize> = parsed.instructions.iter().map(|i| i.line).collect();
    assert_eq!(lines, [4, 6, 7]);
    assert_eq!(
        parsed.instructions[1].kind,
        InstructionKind::Run(CommandForm::Shell("echo hi".into()))
    );
}

#[test]
fn continuations_fold_and_skip_comment_lines() {
    let text = "FROM busybox\nRUN apt-get update && \\\n  # why: keep it small\n\n    apt-get install -y curl \\\n    && echo done\nENV A=1 \\\n    B=2\n";
    let kinds = kinds(text);
    assert_eq!(
        kinds[1],
        InstructionKind::Run(CommandForm::Shell(
            "apt-get update &&     apt-get install -y curl     && echo done".into()
        ))
    );
    let InstructionKind::Env(pairs) = &kinds[2] else {
        panic!("{kinds:?}")
    };
    assert_eq!(pairs.len(), 2);
    // The instruction after a continued one is numbered by its own line.
    let parsed = parse(&format!("{text}USER app\n")).unwrap();
    assert_eq!(parsed.instructions[3].line, 9);
}

#[test]
fn escape_directive_switches_to_backtick() {
    let text = "# escape=`\nFROM busybox\nRUN echo a `\n  b\nWORKDIR C:\\dir\nENV P=`$HOME\n";
    let parsed = parse(text).unwrap();
    assert_eq!(parsed.escape, '`');
    assert_eq!(
        parsed.instructions[1].kind,
        InstructionKind::Run(CommandForm::Shell("echo a   b".into()))
    );
    let built = plan(text, &BTreeMap::new()).unwrap();
    // With backtick as the escape, a backslash is an ordinary character.
    assert_eq!(built.config.workdir, "/C:\\dir");
    assert_eq!(built.config.env, [("P".to_string(), "$HOME".to_string())]);
}

#[test]
fn an_escape_directive_after_an_instruction_is_just_a_comment() {
    let parsed = parse("FROM busybox\n# escape=`\nRUN a `\n").unwrap();
    assert_eq!(parsed.escape, '\\');
}

#[test]
fn exec_form_shell_form_and_the_json_fallback() {
    let kinds = kinds(
        "FROM busybox\nRUN [\"echo\", \"a b\"]\nCMD [\"echo\" \"missing comma\"]\nENTRYPOINT [not json]\nRUN [ \"/bin/true\" ]\n",
    );
    assert_eq!(
        kinds[1],
        InstructionKind::Run(CommandForm::Exec(vec!["echo".into(), "a b".into()]))
    );
    assert_eq!(
        kinds[2],
        InstructionKind::Cmd(CommandForm::Shell("[\"echo\" \"missing comma\"]".into()))
    );
    assert_eq!(
        kinds[3],
        InstructionKind::Entrypoint(CommandForm::Shell("[not json]".into()))
    );
    assert_eq!(
        kinds[4],
        InstructionKind::Run(CommandForm::Exec(vec!["/bin/true".into()]))
    );
}

#[test]
fn shell_must_be_json() {
    let kinds = kinds("FROM busybox\nSHELL [\"/bin/bash\", \"-eu\", \"-c\"]\n");
    assert_eq!(
        kinds[1],
        InstructionKind::Shell(vec!["/bin/bash".into(), "-eu".into(), "-c".into()])
    );
    assert_error("FROM busybox\nSHELL /bin/bash -c\n", 2, "JSON");
}

#[test]
fn copy_and_add_forms() {
    let kinds = kinds(
        "FROM busybox\nCOPY --chown=app:app a.txt b.txt /srv/\nADD [\"with space.tar\", \"/opt/\"]\n",
    );
    let InstructionKind::Copy(copy) = &kinds[1] else {
        panic!()
    };
    assert_eq!(copy.sources, ["a.txt", "b.txt"]);
    assert_eq!(copy.dest, "/srv/");
    assert_eq!(copy.chown.as_deref(), Some("app:app"));
    assert!(!copy.add);
    let InstructionKind::Copy(add) = &kinds[2] else {
        panic!()
    };
    assert_eq!(add.sources, ["with space.tar"]);
    assert!(add.add);
}

#[test]
fn arg_env_label_keep_raw_words() {
    let kinds = kinds(
        "ARG V=1 W\nFROM busybox\nENV A=\"x y\" B=$V\nENV LEGACY some value\nLABEL \"k 1\"=v\n",
    );
    let InstructionKind::Arg(args) = &kinds[0] else {
        panic!()
    };
    assert_eq!(
        (args[0].name.as_str(), args[0].default.as_deref()),
        ("V", Some("1"))
    );
    assert_eq!(
        (args[1].name.as_str(), args[1].default.as_deref()),
        ("W", None)
    );
    let InstructionKind::Env(env) = &kinds[2] else {
        panic!()
    };
    assert_eq!(env[0].value, "\"x y\"");
    assert_eq!(env[1].value, "$V");
    let InstructionKind::Env(legacy) = &kinds[3] else {
        panic!()
    };
    assert_eq!(
        (legacy[0].key.as_str(), legacy[0].value.as_str()),
        ("LEGACY", "some value")
    );
}

#[test]
fn unsupported_instructions_name_their_line() {
    assert_error(
        "FROM busybox\nRUN true\nONBUILD RUN echo\n",
        3,
        "ONBUILD is not supported by Ember",
    );
    assert_error(
        "FROM busybox\nHEALTHCHECK CMD true\n",
        2,
        "HEALTHCHECK is not supported by Ember",
    );
    assert_error(
        "FROM busybox\n\nVOLUME /data\n",
        3,
        "VOLUME is not supported by Ember",
    );
    assert_error(
        "FROM busybox\nfrobnicate now\n",
        2,
        "FROBNICATE is not supported by Ember",
    );
    let err = error("FROM busybox\nRUN a\nRUN b\nRUN c\nRUN d\nRUN e\nONBUILD RUN x\n");
    assert_eq!(
        err.to_string(),
        "Dockerfile line 7: ONBUILD is not supported by Ember"
    );
}

#[test]
fn registry_features_are_refused() {
    assert_error("FROM --platform=linux/arm64 busybox\n", 1, "--platform");
    assert_error(
        "FROM busybox\nRUN --mount=type=cache,target=/c true\n",
        2,
        "RUN --mount",
    );
    assert_error("FROM busybox\nCOPY --chmod=755 a /b\n", 2, "COPY --chmod");
    assert_error(
        "FROM busybox\nADD https://example.com/x.tgz /opt/\n",
        2,
        "ADD from a URL is not supported; use RUN with curl/wget",
    );
    assert_error("FROM busybox\nRUN <<EOF\necho\nEOF\n", 2, "here-document");
}

#[test]
fn from_comes_first_and_once() {
    assert_error(
        "ARG X=1\nRUN true\nFROM busybox\n",
        2,
        "first instruction must be FROM",
    );
    let err = error("# nothing\nARG X=1\n");
    assert_eq!(err.line, None);
    assert!(err.message.contains("no FROM"), "{err}");
}

#[test]
fn malformed_instructions_name_their_line() {
    assert_error("FROM busybox\nCOPY onlyone\n", 2, "two arguments");
    assert_error("FROM busybox\nRUN\n", 2, "RUN");
    assert_error("FROM busybox\nENV\n", 2, "ENV");
    assert_error("FROM busybox\nENV A=1 B\n", 2, "=");
    assert_error("FROM busybox\nENV ONLYKEY\n", 2, "needs a value");
    assert_error("FROM busybox\nCOPY --chown a /b\n", 2, "--chown");
}

#[test]
fn bounds_are_enforced() {
    let huge = format!("FROM busybox\n{}", "#\n".repeat(MAX_DOCKERFILE_BYTES / 2));
    let err = error(&huge);
    assert_eq!(err.line, None);
    assert!(err.message.contains("bytes"), "{err}");

    let long_line = format!("FROM busybox\nRUN echo {}\n", "x".repeat(MAX_LINE_BYTES));
    assert_error(&long_line, 2, "limit");

    let many = format!("FROM busybox\n{}", "RUN true\n".repeat(MAX_INSTRUCTIONS));
    let err = error(&many);
    assert!(err.message.contains("instructions"), "{err}");
    let just_enough = format!(
        "FROM busybox\n{}",
        "RUN true\n".repeat(MAX_INSTRUCTIONS - 1)
    );
    assert!(plan(&just_enough, &BTreeMap::new()).is_ok());
}

#[test]
fn a_byte_order_mark_and_crlf_are_accepted() {
    let built = plan(
        "\u{feff}FROM busybox\r\nRUN echo a \\\r\n  b\r\nUSER app\r\n",
        &BTreeMap::new(),
    )
    .unwrap();
    assert_eq!(built.base.line, 1);
    assert_eq!(built.steps[0].line, 2);
    assert_eq!(built.config.user.as_deref(), Some("app"));
}
