//! Reads a Dockerfile into [`Dockerfile`]: `parse-dockerfile` does the
//! lexing (parser directives, continuations, comments, flags, exec form versus
//! shell form); this module keeps what Ember supports and names the line of
//! anything it does not.

use parse_dockerfile::{Command, Flag, Instruction as Raw, Source};

use crate::source::{checked_text, fold_continuations, LineIndex, MAX_INSTRUCTIONS, MAX_STAGES};
use crate::syntax::{
    ArgDeclaration, CommandForm, CopyInstruction, Dockerfile, FromInstruction, Instruction,
    InstructionKind, KeyValue,
};
use crate::words::split_words;
use crate::DockerfileError;

/// Parses a Dockerfile's syntax; no variable is expanded yet.
pub fn parse(text: &str) -> Result<Dockerfile, DockerfileError> {
    let text = checked_text(text)?;
    let parsed = parse_dockerfile::parse(text).map_err(|e| lexer_error(text, &e))?;
    if parsed.instructions.len() > MAX_INSTRUCTIONS {
        return Err(DockerfileError::whole(format!(
            "the Dockerfile has {} instructions; the limit is {MAX_INSTRUCTIONS}",
            parsed.instructions.len()
        )));
    }
    let escape = parsed
        .parser_directives
        .escape
        .as_ref()
        .map_or('\\', |directive| directive.value.value);
    let lines = LineIndex::new(text);
    let mut instructions = Vec::with_capacity(parsed.instructions.len());
    // Stage names and the line that named each, to refuse a duplicate.
    let mut stage_names: Vec<(String, usize)> = Vec::new();
    let mut stages = 0;
    for raw in &parsed.instructions {
        let line = keyword_offset(raw).map_or(1, |offset| lines.line_of(offset));
        let kind = convert(raw, escape).map_err(|message| DockerfileError::at(line, message))?;
        if let InstructionKind::From(from) = &kind {
            stages += 1;
            if stages > MAX_STAGES {
                return Err(DockerfileError::at(
                    line,
                    format!("more than {MAX_STAGES} build stages (FROM instructions)"),
                ));
            }
            if let Some(name) = &from.stage {
                if let Some((_, first)) = stage_names.iter().find(|(n, _)| n == name) {
                    return Err(DockerfileError::at(
                        line,
                        format!("the stage name {name:?} is already used on line {first}"),
                    ));
                }
                stage_names.push((name.clone(), line));
            }
        }
        instructions.push(Instruction { line, kind });
    }
    Ok(Dockerfile {
        escape,
        instructions,
    })
}

/// Rewrites the lexer's errors in Ember's words, on the line they name.
fn lexer_error(text: &str, error: &parse_dockerfile::Error) -> DockerfileError {
    // `{:#}` is the message without the lexer's own "at line L column C".
    let message = format!("{error:#}");
    let line = error.line();
    if line == 0 {
        return DockerfileError::whole(message.replace(
            "expected at least one FROM instruction",
            "the Dockerfile has no FROM instruction",
        ));
    }
    let word = text
        .lines()
        .nth(line - 1)
        .and_then(|physical| physical.split_whitespace().next())
        .unwrap_or("the instruction")
        .to_uppercase();
    if message.starts_with("unknown instruction") {
        return DockerfileError::at(line, format!("{word} is not supported by Ember"));
    }
    if message == "expected JSON array" && word == "SHELL" {
        return DockerfileError::at(
            line,
            "SHELL takes a JSON array, like SHELL [\"/bin/sh\", \"-c\"]",
        );
    }
    if message == "expected FROM" {
        return DockerfileError::at(
            line,
            "the first instruction must be FROM (only ARG may come before it)",
        );
    }
    DockerfileError::at(line, message)
}

fn keyword_offset(raw: &Raw<'_>) -> Option<usize> {
    let span = match raw {
        Raw::Add(i) => &i.add.span,
        Raw::Arg(i) => &i.arg.span,
        Raw::Cmd(i) => &i.cmd.span,
        Raw::Copy(i) => &i.copy.span,
        Raw::Entrypoint(i) => &i.entrypoint.span,
        Raw::Env(i) => &i.env.span,
        Raw::Expose(i) => &i.expose.span,
        Raw::From(i) => &i.from.span,
        Raw::Healthcheck(i) => &i.healthcheck.span,
        Raw::Label(i) => &i.label.span,
        Raw::Maintainer(i) => &i.maintainer.span,
        Raw::Onbuild(i) => &i.onbuild.span,
        Raw::Run(i) => &i.run.span,
        Raw::Shell(i) => &i.shell.span,
        Raw::Stopsignal(i) => &i.stopsignal.span,
        Raw::User(i) => &i.user.span,
        Raw::Volume(i) => &i.volume.span,
        Raw::Workdir(i) => &i.workdir.span,
        _ => return None,
    };
    Some(span.start)
}

fn convert(raw: &Raw<'_>, escape: char) -> Result<InstructionKind, String> {
    Ok(match raw {
        Raw::From(from) => {
            if let Some(flag) = from.options.first() {
                return Err(flag_error("FROM", flag));
            }
            let stage = match &from.as_ {
                Some((_, name)) => Some(stage_name(&name.value)?),
                None => None,
            };
            InstructionKind::From(FromInstruction {
                image: from.image.value.to_string(),
                stage,
            })
        }
        Raw::Arg(arg) => InstructionKind::Arg(arg_declarations(&arg.arguments.value, escape)?),
        Raw::Run(run) => {
            if let Some(flag) = run.options.first() {
                return Err(flag_error("RUN", flag));
            }
            if !run.here_docs.is_empty() {
                return Err("RUN with a here-document is not supported by Ember".into());
            }
            InstructionKind::Run(command("RUN", &run.arguments, escape)?)
        }
        Raw::Cmd(cmd) => InstructionKind::Cmd(command("CMD", &cmd.arguments, escape)?),
        Raw::Entrypoint(entrypoint) => {
            InstructionKind::Entrypoint(command("ENTRYPOINT", &entrypoint.arguments, escape)?)
        }
        Raw::Shell(shell) => {
            let words: Vec<String> = shell
                .arguments
                .iter()
                .map(|w| w.value.to_string())
                .collect();
            if words.is_empty() {
                return Err("SHELL needs at least the shell's path".into());
            }
            InstructionKind::Shell(words)
        }
        Raw::Copy(copy) => InstructionKind::Copy(copy_instruction(
            false,
            &copy.options,
            &copy.src,
            &copy.dest.value,
        )?),
        Raw::Add(add) => InstructionKind::Copy(copy_instruction(
            true,
            &add.options,
            &add.src,
            &add.dest.value,
        )?),
        Raw::Env(env) => InstructionKind::Env(key_values("ENV", &env.arguments.value, escape)?),
        Raw::Label(label) => {
            InstructionKind::Label(key_values("LABEL", &label.arguments.value, escape)?)
        }
        Raw::Workdir(workdir) => InstructionKind::Workdir(workdir.arguments.value.to_string()),
        Raw::User(user) => InstructionKind::User(user.arguments.value.to_string()),
        Raw::Expose(expose) => InstructionKind::Expose(
            expose
                .arguments
                .iter()
                .map(|port| port.value.to_string())
                .collect(),
        ),
        Raw::Stopsignal(signal) => InstructionKind::StopSignal(signal.arguments.value.to_string()),
        Raw::Maintainer(maintainer) => {
            InstructionKind::Maintainer(maintainer.name.value.to_string())
        }
        Raw::Onbuild(_) => return Err(unsupported("ONBUILD")),
        Raw::Healthcheck(_) => return Err(unsupported("HEALTHCHECK")),
        Raw::Volume(_) => return Err(unsupported("VOLUME")),
        _ => return Err("this instruction is not supported by Ember".into()),
    })
}

fn unsupported(keyword: &str) -> String {
    format!("{keyword} is not supported by Ember")
}

fn flag_error(keyword: &str, flag: &Flag<'_>) -> String {
    let name = &flag.name.value;
    match (keyword, name.as_ref()) {
        ("FROM", "platform") => {
            "FROM --platform is not supported: Ember builds for the host's platform".into()
        }
        ("ADD", "from") => "ADD --from is not a Docker flag; use COPY --from=STAGE".into(),
        _ => format!("{keyword} --{name} is not supported by Ember"),
    }
}

fn command(keyword: &str, raw: &Command<'_>, escape: char) -> Result<CommandForm, String> {
    let form = match raw {
        Command::Exec(words) => {
            CommandForm::Exec(words.value.iter().map(|w| w.value.to_string()).collect())
        }
        Command::Shell(text) => CommandForm::Shell(fold_continuations(text.value, escape)),
        _ => return Err(format!("this form of {keyword} is not supported by Ember")),
    };
    match &form {
        CommandForm::Shell(text) if text.trim().is_empty() => {
            Err(format!("{keyword} needs a command"))
        }
        CommandForm::Exec(words) if keyword == "RUN" && words.is_empty() => {
            Err("RUN needs a command".into())
        }
        _ => Ok(form),
    }
}

fn copy_instruction(
    add: bool,
    options: &[Flag<'_>],
    sources: &[Source<'_>],
    dest: &str,
) -> Result<CopyInstruction, String> {
    let keyword = if add { "ADD" } else { "COPY" };
    let mut chown = None;
    let mut from = None;
    for flag in options {
        match (flag.name.value.as_ref(), &flag.value) {
            ("chown", Some(value)) => chown = Some(value.value.to_string()),
            ("from", Some(value)) if !add => {
                if value.value.is_empty() {
                    return Err("COPY --from needs a stage: --from=NAME or --from=INDEX".into());
                }
                from = Some(value.value.to_string());
            }
            ("from", None) if !add => {
                return Err("COPY --from needs a stage: --from=NAME or --from=INDEX".into())
            }
            ("chown", None) => {
                return Err(format!(
                    "{keyword} --chown needs a value: --chown=USER[:GROUP]"
                ))
            }
            _ => return Err(flag_error(keyword, flag)),
        }
    }
    let sources = sources
        .iter()
        .map(|source| match source {
            Source::Path(path) => Ok(path.value.to_string()),
            Source::HereDoc(_) => Err(format!(
                "{keyword} with a here-document is not supported by Ember"
            )),
            _ => Err(format!(
                "this kind of {keyword} source is not supported by Ember"
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CopyInstruction {
        add,
        sources,
        dest: dest.to_string(),
        chown,
        from,
    })
}

/// Docker's rule for `AS NAME`: a letter, then letters, digits, `-`, `_`
/// and `.`; compared without case.
fn stage_name(raw: &str) -> Result<String, String> {
    let name = raw.to_ascii_lowercase();
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
        && name.len() <= 128;
    if valid {
        Ok(name)
    } else {
        Err(format!(
            "{raw:?} is not a valid stage name: a letter, then letters, digits, '-', '_' or '.'"
        ))
    }
}

fn arg_declarations(text: &str, escape: char) -> Result<Vec<ArgDeclaration>, String> {
    let words = split_words(text, escape);
    if words.is_empty() {
        return Err("ARG needs a name".into());
    }
    words
        .into_iter()
        .map(|word| {
            let (name, default) = match word.split_once('=') {
                Some((name, default)) => (name.to_string(), Some(default.to_string())),
                None => (word, None),
            };
            if name.is_empty() {
                return Err("ARG needs a name before `=`".to_string());
            }
            Ok(ArgDeclaration { name, default })
        })
        .collect()
}

/// ENV and LABEL take `key=value ...`, or the legacy `key value` where the
/// value is the rest of the line; the first word decides which, as in Docker.
fn key_values(keyword: &str, text: &str, escape: char) -> Result<Vec<KeyValue>, String> {
    let words = split_words(text, escape);
    let Some(first) = words.first() else {
        return Err(format!("{keyword} needs key=value"));
    };
    if !first.contains('=') {
        let Some((key, value)) = text.trim().split_once(char::is_whitespace) else {
            return Err(format!(
                "{keyword} {first} needs a value: write {keyword} {first}=VALUE"
            ));
        };
        return Ok(vec![KeyValue {
            key: key.to_string(),
            value: value.trim_start().to_string(),
        }]);
    }
    words
        .iter()
        .map(|word| match word.split_once('=') {
            Some(("", _)) => Err(format!("{keyword} needs a name before `=` in {word:?}")),
            Some((key, value)) => Ok(KeyValue {
                key: key.to_string(),
                value: value.to_string(),
            }),
            None => Err(format!("{keyword}: no `=` in {word:?}; write name=value")),
        })
        .collect()
}
