//! Multi-stage Dockerfiles: stages by name and index, what a stage built on
//! another inherits, and the references Docker refuses (with their line).

use std::collections::BTreeMap;

use ember_dockerfile::{plan, BuildPlan, DockerfileError, StepKind, MAX_STAGES};

fn build(text: &str) -> BuildPlan {
    plan(text, &BTreeMap::new()).unwrap()
}

#[track_caller]
fn assert_error(text: &str, line: usize, needle: &str) {
    let err: DockerfileError = plan(text, &BTreeMap::new()).unwrap_err();
    assert_eq!(err.line, Some(line), "{err}");
    assert!(
        err.message.contains(needle),
        "{err:?} should mention {needle:?}"
    );
}

fn copy_from(plan: &BuildPlan, step: usize) -> (Vec<String>, String, Option<usize>) {
    match &plan.steps[step].kind {
        StepKind::Copy {
            sources,
            dest,
            from,
            ..
        } => (sources.clone(), dest.clone(), *from),
        other => panic!("not a copy: {other:?}"),
    }
}

#[test]
fn copy_from_names_an_earlier_stage_by_name_or_index() {
    let built = build(
        "ARG OUT=/out\n\
         FROM busybox AS Build\n\
         ARG OUT\n\
         RUN mkdir -p $OUT && echo hi > $OUT/hello\n\
         FROM busybox AS other\n\
         RUN true\n\
         FROM busybox\n\
         WORKDIR /srv\n\
         COPY --from=build /out/hello ./\n\
         COPY --from=1 --chown=1:1 out/../etc/passwd /srv/passwd\n\
         CMD [\"cat\", \"hello\"]\n",
    );
    assert_eq!(built.stages.len(), 2);
    assert_eq!(built.stages[0].name.as_deref(), Some("build"));
    assert_eq!(built.stages[0].steps.len(), 1);
    assert_eq!(built.stages[1].name.as_deref(), Some("other"));
    assert_eq!(built.parent, None);
    assert_eq!(built.base.name, "busybox");
    assert_eq!(
        built.base.line, 7,
        "the image's base is the last stage's FROM"
    );
    // Sources are read from the stage's root, not the WORKDIR.
    assert_eq!(
        copy_from(&built, 1),
        (vec!["/out/hello".to_string()], "/srv/".to_string(), Some(0))
    );
    assert_eq!(
        copy_from(&built, 2),
        (
            vec!["/etc/passwd".to_string()],
            "/srv/passwd".to_string(),
            Some(1)
        )
    );
    assert_eq!(
        built.steps[1].instruction,
        "COPY --from=build /out/hello /srv/"
    );
    assert_eq!(built.config.cmd, Some(vec!["cat".into(), "hello".into()]));
}

#[test]
fn a_stage_from_an_earlier_one_inherits_its_base_and_config() {
    let built = build(
        "FROM busybox AS base\n\
         ENV GREETING=hi\n\
         WORKDIR /app\n\
         CMD [\"sh\"]\n\
         FROM base\n\
         RUN echo $GREETING\n",
    );
    assert_eq!(built.parent, Some(0));
    assert_eq!(built.base.name, "busybox");
    assert_eq!(built.base.line, 1);
    assert_eq!(built.config.workdir, "/app");
    assert_eq!(built.config.cmd, Some(vec!["sh".to_string()]));
    assert_eq!(built.config.env, vec![("GREETING".into(), "hi".into())]);
    match &built.steps[0].kind {
        StepKind::Run { workdir, env, .. } => {
            assert_eq!(workdir, "/app");
            assert!(env.contains(&("GREETING".into(), "hi".into())));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_new_stage_starts_from_a_clean_config() {
    let built =
        build("FROM busybox AS a\nENV X=1\nUSER 1000\nCMD [\"a\"]\nFROM busybox\nRUN true\n");
    assert!(built.config.env.is_empty());
    assert_eq!(built.config.user, None);
    assert_eq!(built.config.cmd, None);
}

#[test]
fn single_stage_copies_have_no_from() {
    let built = build("FROM busybox\nCOPY a /a\n");
    assert!(built.stages.is_empty());
    assert_eq!(copy_from(&built, 0).2, None);
}

#[test]
fn bad_stage_references_name_their_line() {
    assert_error(
        "FROM busybox\nCOPY --from=build /a /b\n",
        2,
        "no earlier stage is named \"build\"",
    );
    assert_error(
        "FROM busybox AS build\nCOPY --from=build /a /b\n",
        2,
        "cannot copy from itself",
    );
    assert_error(
        "FROM busybox\nCOPY --from=0 /a /b\n",
        2,
        "cannot copy from itself",
    );
    assert_error(
        "FROM busybox\nCOPY --from=later /a /b\nFROM busybox AS later\n",
        2,
        "comes later",
    );
    assert_error(
        "FROM busybox\nCOPY --from=1 /a /b\nFROM busybox\n",
        2,
        "comes later",
    );
    assert_error(
        "FROM busybox\nRUN true\nFROM busybox\nCOPY --from=7 /a /b\n",
        4,
        "there is no stage 7",
    );
    assert_error(
        "FROM busybox AS me\nFROM me AS me2\nFROM me2 AS me3\nFROM me4 AS me4\n",
        4,
        "itself",
    );
    assert_error("FROM later\nFROM busybox AS later\n", 1, "comes later");
    assert_error(
        "FROM busybox AS a\nRUN true\nFROM busybox AS A\n",
        3,
        "already used on line 1",
    );
    assert_error("FROM busybox AS 1st\n", 1, "not a valid stage name");
    assert_error(
        "FROM busybox AS a\nFROM busybox\nCOPY --from=a /out/* /x/\n",
        3,
        "wildcards",
    );
    assert_error(
        "FROM busybox AS a\nFROM busybox\nADD --from=a /x /x\n",
        3,
        "COPY --from",
    );
    let many = "FROM busybox\n".repeat(MAX_STAGES + 1);
    assert_error(&many, MAX_STAGES + 1, "build stages");
}
