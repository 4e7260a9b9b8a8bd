//! The Dockerfile as Ember reads it: the instructions it supports, with their
//! words still raw (quotes, escapes and `$VARIABLES` in place) and the line
//! each one starts on. Turning words into values is the planner's job,
//! because that needs the ARG and ENV values in scope at each instruction.

use serde::{Deserialize, Serialize};

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dockerfile {
    /// The escape character (`\`, or `` ` `` from `# escape=`` ` ``).
    pub escape: char,
    pub instructions: Vec<Instruction>,
}

/// One instruction and the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instruction {
    pub line: usize,
    pub kind: InstructionKind,
}

/// A command written as a JSON array (exec form) or as text for a shell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandForm {
    Exec(Vec<String>),
    /// Continuation lines already folded into one line.
    Shell(String),
}

/// A `name[=default]` declared by ARG; both parts raw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArgDeclaration {
    pub name: String,
    pub default: Option<String>,
}

/// A `key=value` of ENV or LABEL; both parts raw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// A COPY or ADD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyInstruction {
    /// ADD: local archives are unpacked at the destination.
    pub add: bool,
    pub sources: Vec<String>,
    pub dest: String,
    pub chown: Option<String>,
    /// `COPY --from=STAGE`: a stage name or index, raw.
    pub from: Option<String>,
}

/// `FROM IMAGE [AS NAME]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FromInstruction {
    /// The image reference as written (`NAME[:VERSION]` or an earlier
    /// stage's name, maybe with `$ARG`s).
    pub image: String,
    /// The stage's name, lowercased as Docker does.
    pub stage: Option<String>,
}

/// The instructions Ember supports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstructionKind {
    Arg(Vec<ArgDeclaration>),
    From(FromInstruction),
    Run(CommandForm),
    Cmd(CommandForm),
    Entrypoint(CommandForm),
    Shell(Vec<String>),
    Copy(CopyInstruction),
    Env(Vec<KeyValue>),
    Label(Vec<KeyValue>),
    Workdir(String),
    User(String),
    /// Each `PORT[/PROTOCOL]` as written.
    Expose(Vec<String>),
    StopSignal(String),
    /// Deprecated by Docker; kept so a log can mention it, ignored otherwise.
    Maintainer(String),
}

impl InstructionKind {
    /// The instruction's keyword, for messages.
    pub fn keyword(&self) -> &'static str {
        match self {
            Self::Arg(_) => "ARG",
            Self::From(_) => "FROM",
            Self::Run(_) => "RUN",
            Self::Cmd(_) => "CMD",
            Self::Entrypoint(_) => "ENTRYPOINT",
            Self::Shell(_) => "SHELL",
            Self::Copy(copy) if copy.add => "ADD",
            Self::Copy(_) => "COPY",
            Self::Env(_) => "ENV",
            Self::Label(_) => "LABEL",
            Self::Workdir(_) => "WORKDIR",
            Self::User(_) => "USER",
            Self::Expose(_) => "EXPOSE",
            Self::StopSignal(_) => "STOPSIGNAL",
            Self::Maintainer(_) => "MAINTAINER",
        }
    }
}
