//! Build stages: which earlier stage a `FROM` or `COPY --from` names, by
//! Docker's rules, and the paths `COPY --from` takes out of it.

use crate::build_plan::{BaseRef, Stage};
use crate::config::ImageConfig;
use crate::paths::resolve;

/// A stage the planner has finished: what later stages may build on or
/// copy from.
pub struct FinishedStage {
    pub stage: Stage,
    /// Its configuration (ENV included), which a stage `FROM` it inherits.
    pub config: ImageConfig,
}

/// The earlier stage `FROM image` builds on, if `image` names one. Docker
/// compares stage names without case; a name of a later stage (or of the
/// stage itself) is no stage at all there, so it is refused here rather
/// than taken for an image Ember cannot pull.
pub fn from_stage(
    image: &str,
    finished: &[FinishedStage],
    all_names: &[Option<String>],
) -> Result<Option<usize>, String> {
    let wanted = image.to_ascii_lowercase();
    if let Some(index) = position(finished, &wanted) {
        return Ok(Some(index));
    }
    let current = finished.len();
    match all_names
        .iter()
        .position(|name| name.as_deref() == Some(wanted.as_str()))
    {
        Some(i) if i == current => Err(format!("FROM {image}: a stage cannot build on itself")),
        Some(_) => Err(format!(
            "FROM {image}: the stage {wanted:?} comes later; a stage can only build on an earlier one"
        )),
        None => Ok(None),
    }
}

/// The stage `COPY --from=reference` copies from: an earlier stage's name,
/// or its 0-based index.
pub fn copy_source(
    reference: &str,
    finished: &[FinishedStage],
    all_names: &[Option<String>],
) -> Result<usize, String> {
    let wanted = reference.to_ascii_lowercase();
    if let Some(index) = position(finished, &wanted) {
        return Ok(index);
    }
    let current = finished.len();
    let later = |i: usize| {
        if i == current {
            format!("COPY --from={reference}: a stage cannot copy from itself")
        } else {
            format!(
                "COPY --from={reference}: stage {reference} comes later; COPY --from can only name an earlier stage"
            )
        }
    };
    if let Ok(index) = reference.parse::<usize>() {
        return if index < current {
            Ok(index)
        } else if index < all_names.len() {
            Err(later(index))
        } else {
            Err(format!(
                "COPY --from={reference}: there is no stage {index} (the Dockerfile has {} stages, numbered from 0)",
                all_names.len()
            ))
        };
    }
    match all_names
        .iter()
        .position(|name| name.as_deref() == Some(wanted.as_str()))
    {
        Some(i) => Err(later(i)),
        None => Err(format!(
            "COPY --from={reference}: no earlier stage is named {reference:?} (Ember copies from build stages only, not from images)"
        )),
    }
}

/// A `COPY --from` source as an absolute path in the source stage: Docker
/// reads them from the stage's root, whatever its WORKDIR.
pub fn source_path(source: &str) -> Result<String, String> {
    if source.contains(['*', '?', '[']) {
        return Err(format!(
            "COPY --from {source}: wildcards in a --from source are not supported by Ember; name the path"
        ));
    }
    let path = resolve("/", source);
    if path == "/" {
        return Err(
            "COPY --from /: copying a whole stage is not supported by Ember; name its folders"
                .into(),
        );
    }
    Ok(path)
}

/// The managed base at the root of a stage built on `parent`.
pub fn root_base(finished: &[FinishedStage], parent: usize) -> Option<BaseRef> {
    finished.get(parent).map(|f| f.stage.base.clone())
}

fn position(finished: &[FinishedStage], name: &str) -> Option<usize> {
    finished
        .iter()
        .position(|f| f.stage.name.as_deref() == Some(name))
}
