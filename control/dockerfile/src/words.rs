//! Docker's word rules: how an instruction's text splits into words, and how
//! a word's quotes, escapes and `$VARIABLE`s turn into its value.
//!
//! These follow BuildKit's `parseWords` and its shell lexer (`ProcessWord`),
//! because a Dockerfile that builds under Docker must mean the same here.

use std::iter::Peekable;
use std::str::Chars;

/// The longest value one word may expand to. Substitution can double a value
/// per instruction (`ENV A=$A$A`), so without a bound a short Dockerfile could
/// ask for more memory than the host has.
pub const MAX_EXPANDED_WORD: usize = 64 * 1024;

/// How deeply `${A:-${B:-...}}` may nest; the lexer recurses once per level.
const MAX_NESTING: usize = 16;

/// What went wrong while expanding a word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WordError {
    #[error("unexpected end of text while looking for the matching {0}")]
    Unterminated(&'static str),
    #[error("bad substitution: `${{` must be followed by a variable name")]
    MissingName,
    #[error("the substitution modifier `{0}` is not supported (use :-, -, :+, +, :? or ?)")]
    UnsupportedModifier(String),
    #[error("{name}: {message}")]
    Required { name: String, message: String },
    #[error("a value grows past {MAX_EXPANDED_WORD} bytes after substitution")]
    TooLong,
    #[error("substitutions nest deeper than {MAX_NESTING} levels")]
    TooDeep,
}

/// Where `$NAME` finds its value.
pub trait Variables {
    /// The value of `name`, or `None` when it is not set (which differs from
    /// set-but-empty for the `-`, `+` and `?` modifiers).
    fn get(&self, name: &str) -> Option<&str>;
}

/// Splits text into words at unquoted whitespace, keeping quotes and escapes
/// in the words (they are removed later, when the word is expanded).
pub fn split_words(text: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    // A word that had quotes counts even if empty: `A=""` is a word.
    let mut had_quotes = false;
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(ch) = chars.next() {
        match quote {
            None if ch.is_whitespace() => {
                if had_quotes || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                had_quotes = false;
            }
            None => {
                if ch == '\'' || ch == '"' {
                    quote = Some(ch);
                    had_quotes = true;
                }
                if ch == escape {
                    // The escape and the escaped character stay together, so a
                    // quote or a space after it does not end anything.
                    match chars.next() {
                        Some(next) => {
                            word.push(ch);
                            word.push(next);
                        }
                        None => break,
                    }
                    continue;
                }
                word.push(ch);
            }
            Some(open) => {
                if ch == open {
                    quote = None;
                }
                if ch == escape && open != '\'' {
                    match chars.next() {
                        Some(next) => {
                            word.push(ch);
                            word.push(next);
                        }
                        None => break,
                    }
                    continue;
                }
                word.push(ch);
            }
        }
    }
    if had_quotes || !word.is_empty() {
        words.push(word);
    }
    words
}

/// The value of one word: quotes removed, escapes applied, variables expanded.
pub fn expand(word: &str, escape: char, variables: &dyn Variables) -> Result<String, WordError> {
    let mut lexer = Lexer {
        chars: word.chars().peekable(),
        escape,
        variables,
        depth: 0,
    };
    lexer.word(None)
}

struct Lexer<'a> {
    chars: Peekable<Chars<'a>>,
    escape: char,
    variables: &'a dyn Variables,
    depth: usize,
}

impl Lexer<'_> {
    /// Reads up to `stop` (consumed) or the end of the text.
    fn word(&mut self, stop: Option<char>) -> Result<String, WordError> {
        let mut out = String::new();
        loop {
            let Some(ch) = self.chars.next() else {
                return match stop {
                    Some(_) => Err(WordError::Unterminated("`}`")),
                    None => Ok(out),
                };
            };
            if Some(ch) == stop {
                return Ok(out);
            }
            match ch {
                '\'' => self.single_quoted(&mut out)?,
                '"' => self.double_quoted(&mut out)?,
                '$' => self.dollar(&mut out)?,
                c if c == self.escape => {
                    // An escape at the very end escapes nothing and vanishes.
                    if let Some(next) = self.chars.next() {
                        out.push(next);
                    }
                }
                c => out.push(c),
            }
            if out.len() > MAX_EXPANDED_WORD {
                return Err(WordError::TooLong);
            }
        }
    }

    fn single_quoted(&mut self, out: &mut String) -> Result<(), WordError> {
        loop {
            match self.chars.next() {
                None => return Err(WordError::Unterminated("single quote")),
                Some('\'') => return Ok(()),
                Some(c) => out.push(c),
            }
        }
    }

    fn double_quoted(&mut self, out: &mut String) -> Result<(), WordError> {
        loop {
            match self.chars.next() {
                None => return Err(WordError::Unterminated("double quote")),
                Some('"') => return Ok(()),
                Some('$') => self.dollar(out)?,
                Some(c) if c == self.escape => {
                    // Inside double quotes only these can be escaped; any
                    // other escape character is kept as written.
                    match self.chars.peek() {
                        Some(&next) if next == '"' || next == '$' || next == self.escape => {
                            out.push(next);
                            self.chars.next();
                        }
                        _ => out.push(c),
                    }
                }
                Some(c) => out.push(c),
            }
            if out.len() > MAX_EXPANDED_WORD {
                return Err(WordError::TooLong);
            }
        }
    }

    fn dollar(&mut self, out: &mut String) -> Result<(), WordError> {
        if self.chars.peek() == Some(&'{') {
            self.chars.next();
            return self.braced(out);
        }
        let name = self.name();
        if name.is_empty() {
            // A `$` before nothing that can be a name is just a dollar sign.
            out.push('$');
        } else {
            out.push_str(self.variables.get(&name).unwrap_or(""));
        }
        Ok(())
    }

    /// `${NAME}` and `${NAME<modifier>word}`; the `${` is already read.
    fn braced(&mut self, out: &mut String) -> Result<(), WordError> {
        let name = self.name();
        if name.is_empty() {
            return Err(WordError::MissingName);
        }
        let value = self.variables.get(&name);
        let modifier = match self.chars.next() {
            None => return Err(WordError::Unterminated("`}`")),
            Some('}') => {
                out.push_str(value.unwrap_or(""));
                return Ok(());
            }
            Some(':') => match self.chars.next() {
                Some(m @ ('-' | '+' | '?')) => (m, true),
                Some(other) => return Err(WordError::UnsupportedModifier(format!(":{other}"))),
                None => return Err(WordError::Unterminated("`}`")),
            },
            Some(m @ ('-' | '+' | '?')) => (m, false),
            Some(other) => return Err(WordError::UnsupportedModifier(other.to_string())),
        };
        if self.depth >= MAX_NESTING {
            return Err(WordError::TooDeep);
        }
        self.depth += 1;
        let word = self.word(Some('}'))?;
        self.depth -= 1;
        // With a colon, an empty value counts as unset (as in POSIX sh).
        let (kind, colon) = modifier;
        let present = match value {
            Some(v) => !(colon && v.is_empty()),
            None => false,
        };
        match kind {
            '-' if present => out.push_str(value.unwrap_or("")),
            '-' => out.push_str(&word),
            '+' if present => out.push_str(&word),
            '+' => {}
            _ if present => out.push_str(value.unwrap_or("")),
            _ => {
                let message = if word.is_empty() {
                    "is not set".to_string()
                } else {
                    word
                };
                return Err(WordError::Required { name, message });
            }
        }
        Ok(())
    }

    /// A variable name: letters, digits and `_`; or a run of digits; or one
    /// of the shell's special parameters (never set during a build).
    fn name(&mut self) -> String {
        let mut name = String::new();
        match self.chars.peek() {
            Some(c) if c.is_ascii_digit() => {
                while let Some(c) = self.chars.next_if(|c| c.is_ascii_digit()) {
                    name.push(c);
                }
                return name;
            }
            Some(&c @ ('@' | '*' | '#' | '?' | '-' | '$' | '!')) => {
                self.chars.next();
                name.push(c);
                return name;
            }
            _ => {}
        }
        while let Some(c) = self.chars.next_if(|c| c.is_alphanumeric() || *c == '_') {
            name.push(c);
        }
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Map(BTreeMap<&'static str, &'static str>);
    impl Variables for Map {
        fn get(&self, name: &str) -> Option<&str> {
            self.0.get(name).copied()
        }
    }

    fn vars() -> Map {
        Map(BTreeMap::from([
            ("A", "apple"),
            ("EMPTY", ""),
            ("SP", "a b"),
        ]))
    }

    fn x(word: &str) -> String {
        expand(word, '\\', &vars()).unwrap()
    }

    #[test]
    fn plain_and_braced_variables() {
        assert_eq!(x("$A"), "apple");
        assert_eq!(x("${A}s"), "apples");
        assert_eq!(x("$As"), "");
        assert_eq!(x("x$UNSET-y"), "x-y");
        assert_eq!(x("cost: $"), "cost: $");
        assert_eq!(x("$1x"), "x");
    }

    #[test]
    fn modifiers_follow_posix() {
        assert_eq!(x("${A:-d}"), "apple");
        assert_eq!(x("${UNSET:-d}"), "d");
        assert_eq!(x("${EMPTY:-d}"), "d");
        assert_eq!(x("${EMPTY-d}"), "");
        assert_eq!(x("${UNSET-d}"), "d");
        assert_eq!(x("${A:+alt}"), "alt");
        assert_eq!(x("${EMPTY:+alt}"), "");
        assert_eq!(x("${EMPTY+alt}"), "alt");
        assert_eq!(x("${UNSET:+alt}"), "");
        assert_eq!(x("${UNSET:-$A}"), "apple");
        assert_eq!(x("${UNSET:-${EMPTY:-deep}}"), "deep");
        assert_eq!(x("${UNSET:-a b}"), "a b");
        assert_eq!(x("${A:?}"), "apple");
        let err = expand("${UNSET:?must be given}", '\\', &vars()).unwrap_err();
        assert_eq!(err.to_string(), "UNSET: must be given");
    }

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(x("'$A'"), "$A");
        assert_eq!(x("\"$A\""), "apple");
        assert_eq!(x(r"\$A"), "$A");
        assert_eq!(x(r#""\$A \"q\" \n""#), r#"$A "q" \n"#);
        assert_eq!(x(r"a\ b"), "a b");
        assert_eq!(x(r"trailing\"), "trailing");
        assert_eq!(x("\"$SP\""), "a b");
        assert_eq!(expand("`$A", '`', &vars()).unwrap(), "$A");
        assert_eq!(expand(r"C:\dir", '`', &vars()).unwrap(), r"C:\dir");
    }

    #[test]
    fn malformed_words_are_errors() {
        for bad in [
            "'open", "\"open", "${A", "${A:-x", "${}", "${A#x}", "${A:=x}",
        ] {
            assert!(expand(bad, '\\', &vars()).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn expansion_is_bounded() {
        let deep = format!("{}x{}", "${U:-".repeat(40), "}".repeat(40));
        assert_eq!(expand(&deep, '\\', &vars()), Err(WordError::TooDeep));
        struct Big(String);
        impl Variables for Big {
            fn get(&self, _: &str) -> Option<&str> {
                Some(&self.0)
            }
        }
        let big = Big("y".repeat(MAX_EXPANDED_WORD / 2 + 1));
        assert_eq!(expand("$B$B", '\\', &big), Err(WordError::TooLong));
    }

    #[test]
    fn words_split_outside_quotes() {
        assert_eq!(
            split_words(r#"a=1  b="x y" c='p q' d=e\ f"#, '\\'),
            ["a=1", r#"b="x y""#, "c='p q'", r"d=e\ f"]
        );
        assert_eq!(split_words(r#"e="" "#, '\\'), [r#"e="""#]);
        assert_eq!(
            split_words(r#"a="q\"uote" b"#, '\\'),
            [r#"a="q\"uote""#, "b"]
        );
        assert!(split_words("   ", '\\').is_empty());
    }
}
