//! The Dockerfile parser and planner on hostile text and build args, then
//! again with registry bases (each given the first plan's own config, so
//! inheritance runs on odd values too).
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use ember_dockerfile::{plan, plan_with_bases, BuildPlan, MAX_STAGES};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    build_args: BTreeMap<String, String>,
    text: String,
}

fuzz_target!(|input: Input| {
    let Ok(first) = plan(&input.text, &input.build_args) else {
        return;
    };
    check(&first);
    let bases: BTreeMap<String, _> = first
        .registry_images()
        .into_iter()
        .filter_map(|base| base.image.clone())
        .map(|image| (image, first.config.clone()))
        .collect();
    if let Ok(second) = plan_with_bases(&input.text, &input.build_args, &bases) {
        check(&second);
    }
});

fn check(plan: &BuildPlan) {
    assert!(plan.stages.len() < MAX_STAGES);
    // A stage builds only on one before it, so the builder's walk ends.
    for (index, stage) in plan.stages.iter().enumerate() {
        assert!(stage.parent.is_none_or(|p| p < index), "{plan:?}");
    }
    assert!(plan.parent.is_none_or(|p| p < plan.stages.len()));
    // The builder stores plans as JSON (its cache keys): nothing is lost.
    let json = serde_json::to_string(plan).expect("a plan serialises");
    let back: BuildPlan = serde_json::from_str(&json).expect("a plan deserialises");
    assert_eq!(&back, plan);
}
