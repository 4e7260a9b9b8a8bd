//! Walks a parsed Dockerfile in order, keeping the state Docker keeps (ARG
//! and ENV values, SHELL, WORKDIR, USER), and writes down the steps and the
//! final image configuration.

use std::collections::{BTreeMap, BTreeSet};

use crate::build_plan::{BaseRef, BuildPlan, Stage, Step, StepKind};
use crate::config::ImageConfig;
use crate::paths::{escapes_context, resolve, resolve_dest};
use crate::scope::Scope;
use crate::stages::{self, FinishedStage};
use crate::syntax::{
    ArgDeclaration, CommandForm, CopyInstruction, Dockerfile, FromInstruction, Instruction,
    InstructionKind, KeyValue,
};
use crate::values;
use crate::words::{expand, MAX_EXPANDED_WORD};
use crate::DockerfileError;

/// The most bytes of names and values the build environment (ENV and ARG)
/// may hold. Every RUN step carries a copy, so this bounds the plan's size.
pub const MAX_ENVIRONMENT_BYTES: usize = 32 * 1024;
/// The most bytes of label keys and values.
pub const MAX_LABEL_BYTES: usize = 64 * 1024;
/// The most build args a build may pass.
pub const MAX_BUILD_ARGS: usize = 256;

const NO_FROM_YET: &str = "the first instruction must be FROM (only ARG may come before it)";

impl Dockerfile {
    /// Plans the build of this Dockerfile with the given build args.
    pub fn plan(
        &self,
        build_args: &BTreeMap<String, String>,
    ) -> Result<BuildPlan, DockerfileError> {
        self.plan_with_bases(build_args, &BTreeMap::new())
    }

    /// Plans the build with the configurations of the registry images its
    /// stages start from (by reference, as [`BuildPlan::registry_images`]
    /// names them): a stage starts with its base's ENV, WORKDIR, USER,
    /// ports and command, as in Docker. A registry image missing from
    /// `bases` starts from an empty configuration.
    pub fn plan_with_bases(
        &self,
        build_args: &BTreeMap<String, String>,
        bases: &BTreeMap<String, ImageConfig>,
    ) -> Result<BuildPlan, DockerfileError> {
        check_build_args(build_args)?;
        let mut planner = Planner {
            escape: self.escape,
            build_args,
            bases,
            cmd_inherited: false,
            used_build_args: BTreeSet::new(),
            global: Scope::default(),
            stage: None,
            stage_names: self
                .instructions
                .iter()
                .filter_map(|i| match &i.kind {
                    InstructionKind::From(from) => Some(from.stage.clone()),
                    _ => None,
                })
                .collect(),
            finished: Vec::new(),
            parent: None,
            steps: Vec::new(),
            config: ImageConfig::default(),
            warnings: Vec::new(),
            keyword: "",
        };
        for instruction in &self.instructions {
            planner
                .instruction(instruction)
                .map_err(|message| DockerfileError::at(instruction.line, message))?;
        }
        planner.finish()
    }
}

fn check_build_args(build_args: &BTreeMap<String, String>) -> Result<(), DockerfileError> {
    if build_args.len() > MAX_BUILD_ARGS {
        return Err(DockerfileError::whole(format!(
            "{} build args given; the limit is {MAX_BUILD_ARGS}",
            build_args.len()
        )));
    }
    for (name, value) in build_args {
        values::variable_name("build arg", name).map_err(DockerfileError::whole)?;
        if value.len() > MAX_EXPANDED_WORD {
            return Err(DockerfileError::whole(format!(
                "build arg {name} is {} bytes; the limit is {MAX_EXPANDED_WORD}",
                value.len()
            )));
        }
    }
    Ok(())
}

struct Planner<'a> {
    escape: char,
    build_args: &'a BTreeMap<String, String>,
    /// The configurations of the registry images stages start from.
    bases: &'a BTreeMap<String, ImageConfig>,
    /// The current stage's CMD came from its base: an ENTRYPOINT drops it.
    cmd_inherited: bool,
    used_build_args: BTreeSet<String>,
    /// ARGs declared before FROM.
    global: Scope,
    /// The base and the stage's variables, once FROM is seen.
    stage: Option<(BaseRef, Scope)>,
    /// Every stage's `AS` name, in order, to tell a later stage from none.
    stage_names: Vec<Option<String>>,
    /// The stages before the current one.
    finished: Vec<FinishedStage>,
    /// The earlier stage the current one is FROM.
    parent: Option<usize>,
    /// The current stage's steps and configuration.
    steps: Vec<Step>,
    config: ImageConfig,
    warnings: Vec<String>,
    /// The keyword of the instruction being planned, for messages.
    keyword: &'static str,
}

impl Planner<'_> {
    fn instruction(&mut self, instruction: &Instruction) -> Result<(), String> {
        let line = instruction.line;
        self.keyword = instruction.kind.keyword();
        let before_from = matches!(
            instruction.kind,
            InstructionKind::Arg(_) | InstructionKind::From(_)
        );
        // The lexer already rejects this; a hand-built `Dockerfile` may not.
        if self.stage.is_none() && !before_from {
            return Err(NO_FROM_YET.into());
        }
        match &instruction.kind {
            InstructionKind::Arg(declarations) => self.arg(declarations),
            InstructionKind::From(from) => self.from(line, from),
            InstructionKind::Run(form) => {
                let argv = self.argv(form);
                let env = self.scope().run_environment();
                self.push(
                    line,
                    format!("RUN {}", display_command(form)),
                    StepKind::Run {
                        argv,
                        env,
                        workdir: self.config.workdir.clone(),
                        user: self.config.user.clone(),
                    },
                );
                Ok(())
            }
            InstructionKind::Cmd(form) => {
                self.config.cmd = Some(self.argv(form));
                self.cmd_inherited = false;
                Ok(())
            }
            InstructionKind::Entrypoint(form) => {
                self.config.entrypoint = Some(self.argv(form));
                // Docker resets a CMD the base image set, not one written
                // earlier in this stage.
                if std::mem::take(&mut self.cmd_inherited) {
                    self.config.cmd = None;
                }
                Ok(())
            }
            InstructionKind::Shell(shell) => {
                self.config.shell = shell.clone();
                Ok(())
            }
            InstructionKind::Copy(copy) => self.copy(line, copy),
            InstructionKind::Env(pairs) => self.env(pairs),
            InstructionKind::Label(pairs) => self.label(pairs),
            InstructionKind::Workdir(path) => {
                let path = self.expand(path)?;
                if path.is_empty() {
                    return Err("WORKDIR needs a path".into());
                }
                let path = resolve(&self.config.workdir, &path);
                self.config.workdir = path.clone();
                let user = self.config.user.clone();
                self.push(
                    line,
                    format!("WORKDIR {path}"),
                    StepKind::Workdir { path, user },
                );
                Ok(())
            }
            InstructionKind::User(user) => {
                let user = self.expand(user)?;
                values::user("USER", &user)?;
                self.config.user = Some(user);
                Ok(())
            }
            InstructionKind::Expose(specs) => self.expose(specs),
            InstructionKind::StopSignal(signal) => {
                let signal = self.expand(signal)?;
                values::stop_signal(&signal)?;
                self.config.stop_signal = Some(signal);
                Ok(())
            }
            InstructionKind::Maintainer(_) => {
                self.warnings.push(format!(
                    "line {line}: MAINTAINER is deprecated and ignored; use LABEL maintainer=..."
                ));
                Ok(())
            }
        }
    }

    fn finish(mut self) -> Result<BuildPlan, DockerfileError> {
        let Some((base, scope)) = self.stage.take() else {
            return Err(DockerfileError::whole(
                "the Dockerfile has no FROM instruction",
            ));
        };
        let mut warnings = self.warnings;
        let unused: Vec<&str> = self
            .build_args
            .keys()
            .filter(|name| !self.used_build_args.contains(*name))
            .map(String::as_str)
            .collect();
        if !unused.is_empty() {
            warnings.push(format!(
                "build args not declared by any ARG were ignored: {}",
                unused.join(", ")
            ));
        }
        let mut config = self.config;
        config.env = scope.env().to_vec();
        Ok(BuildPlan {
            base,
            parent: self.parent,
            steps: self.steps,
            stages: self.finished.into_iter().map(|f| f.stage).collect(),
            config,
            warnings,
        })
    }

    /// Sets the current stage aside for the stages after it.
    fn finish_stage(&mut self) {
        let Some((base, scope)) = self.stage.take() else {
            return;
        };
        let mut config = std::mem::take(&mut self.config);
        config.env = scope.env().to_vec();
        let index = self.finished.len();
        self.finished.push(FinishedStage {
            stage: Stage {
                name: self.stage_names.get(index).cloned().flatten(),
                base,
                parent: self.parent.take(),
                steps: std::mem::take(&mut self.steps),
            },
            config,
        });
    }

    fn scope(&self) -> &Scope {
        self.stage.as_ref().map_or(&self.global, |(_, scope)| scope)
    }

    fn expand(&self, word: &str) -> Result<String, String> {
        expand(word, self.escape, self.scope()).map_err(|e| format!("{}: {e}", self.keyword))
    }

    fn push(&mut self, line: usize, instruction: String, kind: StepKind) {
        self.steps.push(Step {
            line,
            instruction,
            kind,
        });
    }

    /// Exec form as written; shell form as the SHELL in force plus the text.
    fn argv(&self, form: &CommandForm) -> Vec<String> {
        match form {
            CommandForm::Exec(words) => words.clone(),
            CommandForm::Shell(text) => {
                let mut argv = self.config.shell.clone();
                argv.push(text.clone());
                argv
            }
        }
    }

    fn from(&mut self, line: usize, from: &FromInstruction) -> Result<(), String> {
        self.finish_stage();
        // Only the ARGs declared before the first FROM are in scope here.
        let image =
            expand(&from.image, self.escape, &self.global).map_err(|e| format!("FROM: {e}"))?;
        let parent = stages::from_stage(&image, &self.finished, &self.stage_names)?;
        let (base, scope) =
            match parent.and_then(|p| Some((p, stages::root_base(&self.finished, p)?))) {
                Some((parent, base)) => {
                    // A stage built on another starts with its configuration.
                    let config = self.finished[parent].config.clone();
                    self.parent = Some(parent);
                    (base, self.start_from(config)?)
                }
                None if values::is_managed_base(&image) => {
                    let (name, version) = values::base_image(&image)?;
                    self.parent = None;
                    let base = BaseRef {
                        name,
                        version,
                        line,
                        image: None,
                    };
                    (base, self.start_from(ImageConfig::default())?)
                }
                None => {
                    let reference = values::registry_image(&image)?;
                    let config = self.bases.get(&reference).cloned().unwrap_or_default();
                    self.parent = None;
                    let base = BaseRef {
                        name: reference.clone(),
                        version: None,
                        line,
                        image: Some(reference),
                    };
                    (base, self.start_from(config)?)
                }
            };
        self.stage = Some((base, scope));
        Ok(())
    }

    /// Makes `config` the new stage's configuration; its ENV is in scope.
    fn start_from(&mut self, config: ImageConfig) -> Result<Scope, String> {
        let mut scope = Scope::default();
        for (key, value) in &config.env {
            scope.set_env(key.clone(), value.clone());
        }
        check_environment(&scope).map_err(|e| format!("the base image's ENV: {e}"))?;
        self.cmd_inherited = config.cmd.is_some();
        self.config = config;
        Ok(scope)
    }

    fn arg(&mut self, declarations: &[ArgDeclaration]) -> Result<(), String> {
        // Docker expands every part against the scope before the instruction.
        let mut declared = Vec::with_capacity(declarations.len());
        for declaration in declarations {
            let name = self.expand(&declaration.name)?;
            values::variable_name("ARG", &name)?;
            let default = match &declaration.default {
                Some(default) => Some(self.expand(default)?),
                None => None,
            };
            declared.push((name, default));
        }
        for (name, default) in declared {
            let from_build = self.build_args.get(&name).cloned();
            if from_build.is_some() {
                self.used_build_args.insert(name.clone());
            }
            let value = from_build.or(default);
            match &mut self.stage {
                None => {
                    self.global.declare_arg(name, value);
                    check_environment(&self.global)?;
                }
                Some((_, scope)) => {
                    // Inside the stage an ARG without a value takes the one
                    // of the same ARG declared before FROM.
                    let value = value.or_else(|| self.global.arg(&name).map(str::to_string));
                    scope.declare_arg(name, value);
                    check_environment(scope)?;
                }
            }
        }
        Ok(())
    }

    fn env(&mut self, pairs: &[KeyValue]) -> Result<(), String> {
        let expanded = self.expand_pairs("ENV", pairs)?;
        let Some((_, scope)) = &mut self.stage else {
            return Err(NO_FROM_YET.into());
        };
        for (key, value) in expanded {
            values::variable_name("ENV", &key)?;
            scope.set_env(key, value);
        }
        check_environment(scope)
    }

    fn label(&mut self, pairs: &[KeyValue]) -> Result<(), String> {
        for (key, value) in self.expand_pairs("LABEL", pairs)? {
            if key.is_empty() {
                return Err("LABEL needs a non-empty key".into());
            }
            self.config.labels.insert(key, value);
        }
        let bytes: usize = self
            .config
            .labels
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum();
        if bytes > MAX_LABEL_BYTES {
            return Err(format!(
                "the labels reach {bytes} bytes; the limit is {MAX_LABEL_BYTES}"
            ));
        }
        Ok(())
    }

    fn expand_pairs(
        &self,
        keyword: &str,
        pairs: &[KeyValue],
    ) -> Result<Vec<(String, String)>, String> {
        pairs
            .iter()
            .map(|pair| {
                let key = self.expand(&pair.key)?;
                let value = self.expand(&pair.value)?;
                if key.is_empty() {
                    return Err(format!("{keyword} needs a non-empty name"));
                }
                Ok((key, value))
            })
            .collect()
    }

    fn expose(&mut self, specs: &[String]) -> Result<(), String> {
        for spec in specs {
            // A variable may hold several ports (`EXPOSE $PORTS`).
            for word in self.expand(spec)?.split_whitespace() {
                let port = values::port(word)?;
                if !self.config.exposed_ports.contains(&port) {
                    self.config.exposed_ports.push(port);
                }
            }
        }
        Ok(())
    }

    fn copy(&mut self, line: usize, copy: &CopyInstruction) -> Result<(), String> {
        let keyword = if copy.add { "ADD" } else { "COPY" };
        let from = match &copy.from {
            Some(reference) => {
                let reference = self.expand(reference)?;
                let index = stages::copy_source(&reference, &self.finished, &self.stage_names)?;
                Some((reference, index))
            }
            None => None,
        };
        let mut sources = Vec::with_capacity(copy.sources.len());
        for source in &copy.sources {
            let source = self.expand(source)?;
            if source.is_empty() {
                return Err(format!("{keyword} has an empty source"));
            }
            if from.is_some() {
                sources.push(stages::source_path(&source)?);
                continue;
            }
            if source.contains("://") || source.starts_with("git@") {
                return Err(if copy.add {
                    "ADD from a URL is not supported; use RUN with curl/wget".to_string()
                } else {
                    format!("COPY {source}: a source must be a path in the build context")
                });
            }
            if escapes_context(&source) {
                return Err(format!(
                    "{keyword} {source}: the source is outside the build context"
                ));
            }
            sources.push(source);
        }
        let dest = self.expand(&copy.dest)?;
        if dest.is_empty() {
            return Err(format!("{keyword} needs a destination"));
        }
        if sources.len() > 1 && !dest.ends_with('/') {
            return Err(format!(
                "{keyword} with several sources needs a directory destination ending in '/', not {dest:?}"
            ));
        }
        let chown = match &copy.chown {
            Some(chown) => {
                let chown = self.expand(chown)?;
                values::user(&format!("{keyword} --chown"), &chown)?;
                Some(chown)
            }
            None => None,
        };
        let dest = resolve_dest(&self.config.workdir, &dest);
        let mut instruction = display_copy(keyword, &sources, &dest, chown.as_deref());
        if let Some((reference, _)) = &from {
            instruction.insert_str(keyword.len(), &format!(" --from={reference}"));
        }
        self.push(
            line,
            instruction,
            StepKind::Copy {
                sources,
                dest,
                chown,
                extract_archives: copy.add,
                from: from.map(|(_, index)| index),
            },
        );
        Ok(())
    }
}

fn check_environment(scope: &Scope) -> Result<(), String> {
    let bytes = scope.environment_bytes();
    if bytes > MAX_ENVIRONMENT_BYTES {
        return Err(format!(
            "ENV and ARG values reach {bytes} bytes; the limit is {MAX_ENVIRONMENT_BYTES}"
        ));
    }
    Ok(())
}

/// A command on one line: shell text as is, exec form as its JSON array.
fn display_command(form: &CommandForm) -> String {
    match form {
        CommandForm::Shell(text) => text.trim().to_string(),
        CommandForm::Exec(words) => json_array(words),
    }
}

/// COPY/ADD on one line; the JSON form when a word holds whitespace, so that
/// two different copies never print the same.
fn display_copy(keyword: &str, sources: &[String], dest: &str, chown: Option<&str>) -> String {
    let mut text = keyword.to_string();
    if let Some(chown) = chown {
        text.push_str(&format!(" --chown={chown}"));
    }
    let words: Vec<String> = sources.iter().cloned().chain([dest.to_string()]).collect();
    if words.iter().any(|word| word.contains(char::is_whitespace)) {
        text.push(' ');
        text.push_str(&json_array(&words));
    } else {
        for word in &words {
            text.push(' ');
            text.push_str(word);
        }
    }
    text
}

fn json_array(words: &[String]) -> String {
    // Serialising strings cannot fail; the fallback only avoids a panic path.
    serde_json::to_string(words).unwrap_or_else(|_| words.join(" "))
}
