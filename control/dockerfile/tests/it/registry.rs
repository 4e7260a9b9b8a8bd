//! Stages `FROM` a registry image: the plan names the image, and with its
//! configuration the stage starts where Docker's would.

use std::collections::BTreeMap;

use ember_dockerfile::{plan_with_bases, ImageConfig, StepKind};

fn python_config() -> ImageConfig {
    ImageConfig {
        env: vec![
            ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
            ("LANG".into(), "C.UTF-8".into()),
        ],
        workdir: "/app".into(),
        user: Some("app".into()),
        exposed_ports: vec![9000],
        entrypoint: None,
        cmd: Some(vec!["python3".into()]),
        ..ImageConfig::default()
    }
}

fn with_python(text: &str) -> ember_dockerfile::BuildPlan {
    let bases = BTreeMap::from([("python:3.12-slim".to_string(), python_config())]);
    plan_with_bases(text, &BTreeMap::new(), &bases).unwrap()
}

#[test]
fn a_registry_from_is_named_in_the_plan_once() {
    let plan = ember_dockerfile::plan(
        "ARG TAG=3.12-slim\nFROM python:${TAG} AS build\nRUN true\n\
         FROM public.ecr.aws/docker/library/python:3.11-slim AS other\n\
         FROM python:3.12-slim\nCOPY --from=build /x /x\n",
        &BTreeMap::new(),
    )
    .unwrap();
    let images: Vec<_> = plan
        .registry_images()
        .iter()
        .map(|b| (b.image.clone().unwrap(), b.line))
        .collect();
    assert_eq!(
        images,
        [
            ("python:3.12-slim".to_string(), 2),
            (
                "public.ecr.aws/docker/library/python:3.11-slim".to_string(),
                4
            )
        ]
    );
    let managed = ember_dockerfile::plan("FROM busybox\n", &BTreeMap::new()).unwrap();
    assert!(managed.registry_images().is_empty());
    assert_eq!(managed.base.image, None);
}

#[test]
fn steps_run_with_the_base_images_env_workdir_and_user() {
    let plan = with_python("FROM python:3.12-slim\nENV PATH=/venv/bin:$PATH\nRUN pip install x\n");
    let StepKind::Run {
        env, workdir, user, ..
    } = &plan.steps[0].kind
    else {
        panic!("{:?}", plan.steps[0]);
    };
    assert!(env.contains(&(
        "PATH".to_string(),
        "/venv/bin:/usr/local/bin:/usr/bin:/bin".to_string()
    )));
    assert!(env.contains(&("LANG".to_string(), "C.UTF-8".to_string())));
    assert_eq!(workdir, "/app");
    assert_eq!(user.as_deref(), Some("app"));
    assert_eq!(plan.config.exposed_ports, [9000]);
    assert_eq!(plan.config.command(), Some(vec!["python3".to_string()]));
}

#[test]
fn an_entrypoint_drops_the_base_images_cmd_but_not_the_dockerfiles() {
    let plan = with_python("FROM python:3.12-slim\nENTRYPOINT [\"/serve\"]\n");
    assert_eq!(plan.config.command(), Some(vec!["/serve".to_string()]));
    let plan = with_python("FROM python:3.12-slim\nCMD [\"app.py\"]\nENTRYPOINT [\"python3\"]\n");
    assert_eq!(
        plan.config.command(),
        Some(vec!["python3".to_string(), "app.py".to_string()])
    );
    let base_entrypoint = ImageConfig {
        entrypoint: Some(vec!["/init".into()]),
        cmd: Some(vec!["serve".into()]),
        ..ImageConfig::default()
    };
    let bases = BTreeMap::from([("x/y".to_string(), base_entrypoint)]);
    let plan = plan_with_bases("FROM x/y\nCMD [\"other\"]\n", &BTreeMap::new(), &bases).unwrap();
    assert_eq!(
        plan.config.command(),
        Some(vec!["/init".to_string(), "other".to_string()])
    );
}

#[test]
fn a_stage_built_on_a_registry_stage_keeps_its_base() {
    let plan = with_python("FROM python:3.12-slim AS base\nENV A=1\nFROM base\nRUN true\n");
    assert_eq!(plan.base.image.as_deref(), Some("python:3.12-slim"));
    assert_eq!(plan.parent, Some(0));
    let StepKind::Run { env, user, .. } = &plan.steps[0].kind else {
        panic!();
    };
    assert!(env.contains(&("A".to_string(), "1".to_string())));
    assert_eq!(user.as_deref(), Some("app"));
}
