//! Label selectors with upstream's grammar (`k8s.io/apimachinery/pkg/labels`):
//! comma-separated requirements, each `key`, `!key`, `key=value`, `key==value`,
//! `key!=value`, `key in (v1,v2)`, `key notin (v1,v2)`, `key>n` or `key<n`, with keys and
//! values validated as label keys and values. All requirements must hold (AND).

use std::collections::BTreeMap;
use std::fmt;

use crate::validation;

/// A selector that could not be parsed, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unable to parse requirement: {reason}")]
pub struct SelectorError {
    pub reason: String,
}

fn err<T>(reason: impl Into<String>) -> Result<T, SelectorError> {
    Err(SelectorError {
        reason: reason.into(),
    })
}

/// How a requirement compares a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    Equals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
    GreaterThan,
    LessThan,
}

/// One requirement on one label key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

impl Requirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.key);
        match self.operator {
            Operator::Equals | Operator::In => v.is_some_and(|v| self.values.contains(v)),
            Operator::NotEquals | Operator::NotIn => !v.is_some_and(|v| self.values.contains(v)),
            Operator::Exists => v.is_some(),
            Operator::DoesNotExist => v.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let (Some(have), Some(want)) = (
                    v.and_then(|v| v.parse::<i64>().ok()),
                    self.values.first().and_then(|w| w.parse::<i64>().ok()),
                ) else {
                    return false;
                };
                if self.operator == Operator::GreaterThan {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// Parses the `labelSelector` query parameter / `kubectl -l` syntax.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let tokens = lex(s)?;
        Parser { tokens, pos: 0 }.selector()
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Whether this is the empty selector.
    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }
}

impl LabelSelector {
    /// Converts an API `LabelSelector` (`matchLabels`, `matchExpressions`), as upstream's
    /// `LabelSelectorAsSelector` does. An empty one selects everything; callers treat an
    /// absent one as selecting nothing.
    pub fn from_api(
        s: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    ) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for (k, v) in s.match_labels.iter().flatten() {
            validate_key(k)?;
            validate_value(v)?;
            requirements.push(Requirement {
                key: k.clone(),
                operator: Operator::Equals,
                values: vec![v.clone()],
            });
        }
        for e in s.match_expressions.iter().flatten() {
            validate_key(&e.key)?;
            let values = e.values.clone().unwrap_or_default();
            let operator = match e.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => return err(format!("{other:?} is not a valid label selector operator")),
            };
            match operator {
                Operator::In | Operator::NotIn if values.is_empty() => {
                    return err("for 'in', 'notin' operators, values set can't be empty")
                }
                Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                    return err("values set must be empty for exists and does not exist")
                }
                _ => {}
            }
            for v in &values {
                validate_value(v)?;
            }
            requirements.push(Requirement {
                key: e.key.clone(),
                operator,
                values,
            });
        }
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector { requirements })
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let k = &r.key;
            match r.operator {
                Operator::Equals => write!(f, "{k}={}", r.values[0])?,
                Operator::NotEquals => write!(f, "{k}!={}", r.values[0])?,
                Operator::In => write!(f, "{k} in ({})", r.values.join(","))?,
                Operator::NotIn => write!(f, "{k} notin ({})", r.values.join(","))?,
                Operator::Exists => write!(f, "{k}")?,
                Operator::DoesNotExist => write!(f, "!{k}")?,
                Operator::GreaterThan => write!(f, "{k}>{}", r.values[0])?,
                Operator::LessThan => write!(f, "{k}<{}", r.values[0])?,
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Eq,
    DoubleEq,
    NotEq,
    Not,
    In,
    NotIn,
    Open,
    Close,
    Comma,
    Gt,
    Lt,
}

fn lex(s: &str) -> Result<Vec<Token>, SelectorError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '=' => {
                chars.next();
                if chars.peek() == Some(&'=') {
                    chars.next();
                    out.push(Token::DoubleEq);
                } else {
                    out.push(Token::Eq);
                }
            }
            '!' => {
                chars.next();
                if chars.peek() == Some(&'=') {
                    chars.next();
                    out.push(Token::NotEq);
                } else {
                    out.push(Token::Not);
                }
            }
            '(' | ')' | ',' | '>' | '<' => {
                chars.next();
                out.push(match c {
                    '(' => Token::Open,
                    ')' => Token::Close,
                    ',' => Token::Comma,
                    '>' => Token::Gt,
                    _ => Token::Lt,
                });
            }
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || "!=(),<>".contains(c) {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                out.push(match word.as_str() {
                    "in" => Token::In,
                    "notin" => Token::NotIn,
                    _ => Token::Ident(word),
                });
            }
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn selector(mut self) -> Result<LabelSelector, SelectorError> {
        let mut requirements = Vec::new();
        if self.peek().is_none() {
            return Ok(LabelSelector { requirements });
        }
        loop {
            requirements.push(self.requirement()?);
            match self.next() {
                None => return Ok(LabelSelector { requirements }),
                Some(Token::Comma) => {}
                Some(t) => return err(format!("found {t:?}, expected: ','")),
            }
        }
    }

    fn key(&mut self) -> Result<String, SelectorError> {
        match self.next() {
            Some(Token::Ident(k)) => {
                validate_key(&k)?;
                Ok(k)
            }
            Some(t) => err(format!("found {t:?}, expected: identifier")),
            None => err("found end of selector, expected: identifier"),
        }
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        if self.peek() == Some(&Token::Not) {
            self.next();
            let key = self.key()?;
            return Ok(Requirement {
                key,
                operator: Operator::DoesNotExist,
                values: Vec::new(),
            });
        }
        let key = self.key()?;
        let operator = match self.peek() {
            None | Some(Token::Comma) => {
                return Ok(Requirement {
                    key,
                    operator: Operator::Exists,
                    values: Vec::new(),
                })
            }
            Some(Token::Eq) | Some(Token::DoubleEq) => Operator::Equals,
            Some(Token::NotEq) => Operator::NotEquals,
            Some(Token::In) => Operator::In,
            Some(Token::NotIn) => Operator::NotIn,
            Some(Token::Gt) => Operator::GreaterThan,
            Some(Token::Lt) => Operator::LessThan,
            Some(t) => {
                return err(format!(
                    "found {t:?}, expected: in, notin, =, ==, !=, gt, lt"
                ))
            }
        };
        self.next();
        let values = match operator {
            Operator::In | Operator::NotIn => self.value_set()?,
            _ => {
                let v = self.single_value()?;
                if matches!(operator, Operator::GreaterThan | Operator::LessThan)
                    && v.parse::<i64>().is_err()
                {
                    return err(format!(
                        "for 'Gt', 'Lt' operators, the value must be an integer: {v:?}"
                    ));
                }
                vec![v]
            }
        };
        Ok(Requirement {
            key,
            operator,
            values,
        })
    }

    /// A value after `=`, `!=`, `>`, `<`: possibly empty (`a=` selects an empty value).
    fn single_value(&mut self) -> Result<String, SelectorError> {
        match self.peek() {
            Some(Token::Ident(_)) => match self.next() {
                Some(Token::Ident(v)) => {
                    validate_value(&v)?;
                    Ok(v)
                }
                _ => unreachable!("peeked an identifier"),
            },
            None | Some(Token::Comma) => Ok(String::new()),
            Some(t) => err(format!("found {t:?}, expected: identifier")),
        }
    }

    fn value_set(&mut self) -> Result<Vec<String>, SelectorError> {
        if self.next() != Some(Token::Open) {
            return err("expected: '(' after 'in' or 'notin'");
        }
        let mut values = Vec::new();
        loop {
            match self.next() {
                Some(Token::Ident(v)) => {
                    validate_value(&v)?;
                    values.push(v);
                    match self.next() {
                        Some(Token::Comma) => {}
                        Some(Token::Close) => break,
                        _ => return err("expected: ',' or ')' in a set of values"),
                    }
                }
                Some(Token::Comma) => values.push(String::new()),
                Some(Token::Close) => break,
                _ => return err("unterminated set of values: expected ')'"),
            }
        }
        if values.is_empty() {
            return err("for 'in', 'notin' operators, values set can't be empty");
        }
        Ok(values)
    }
}

/// A label key, validated as upstream validates qualified names.
pub fn validate_key(k: &str) -> Result<(), SelectorError> {
    match validation::qualified_name(k).first() {
        None => Ok(()),
        Some(e) => err(format!("key: Invalid value: {k:?}: {e}")),
    }
}

/// A label value: empty, or a name part.
pub fn validate_value(v: &str) -> Result<(), SelectorError> {
    match validation::label_value(v).first() {
        None => Ok(()),
        Some(e) => err(format!("values[0][{v}]: Invalid value: {v:?}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(s: &str) -> LabelSelector {
        LabelSelector::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn equality_and_sets() {
        let l = labels(&[("app", "web"), ("tier", "frontend"), ("release", "3")]);
        assert!(sel("").matches(&l));
        assert!(sel("app=web").matches(&l));
        assert!(sel("app==web,tier=frontend").matches(&l));
        assert!(!sel("app=web,tier=backend").matches(&l));
        assert!(sel("app!=db").matches(&l));
        assert!(
            sel("missing!=x").matches(&l),
            "!= holds when the label is absent"
        );
        assert!(sel("tier in (frontend, backend)").matches(&l));
        assert!(!sel("tier notin (frontend)").matches(&l));
        assert!(sel("missing notin (x)").matches(&l));
        assert!(sel("app").matches(&l));
        assert!(sel("!missing").matches(&l));
        assert!(!sel("!app").matches(&l));
        assert!(sel("release>2,release<4").matches(&l));
        assert!(
            !sel("app>2").matches(&l),
            "a non-numeric label never compares"
        );
    }

    #[test]
    fn empty_values_and_spacing() {
        let l = labels(&[("a", "")]);
        assert!(sel("a=").matches(&l));
        assert!(sel("  a  ,  b  notin  ( x , y )  ").matches(&l));
        assert_eq!(
            sel("x in (a,,b)").requirements[0].values,
            vec!["a", "", "b"]
        );
    }

    #[test]
    fn keys_with_prefixes() {
        let l = labels(&[("app.kubernetes.io/name", "nginx")]);
        assert!(sel("app.kubernetes.io/name=nginx").matches(&l));
        assert!(LabelSelector::parse("Bad_Prefix/name=x").is_err());
        assert!(LabelSelector::parse("-bad=x").is_err());
        assert!(LabelSelector::parse(&format!("{}=x", "k".repeat(64))).is_err());
    }

    #[test]
    fn malformed_selectors_are_errors() {
        for bad in [
            "a=b c",
            "a in b",
            "a in (b",
            "x in ()",
            "=a",
            "a,,b",
            "a=(b)",
            "a>b",
            "a in (b c)",
            "a=b=c",
            "!",
            "a notin",
        ] {
            let e = LabelSelector::parse(bad);
            assert!(e.is_err(), "{bad:?} parsed as {e:?}");
            assert!(e
                .unwrap_err()
                .to_string()
                .starts_with("unable to parse requirement: "));
        }
        assert!(LabelSelector::parse("a=in").is_err(), "'in' is a keyword");
    }

    #[test]
    fn from_api_selectors() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
            LabelSelector as Api, LabelSelectorRequirement as Req,
        };
        let api = Api {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: Some(vec![Req {
                key: "tier".into(),
                operator: "In".into(),
                values: Some(vec!["fe".into(), "be".into()]),
            }]),
        };
        let s = LabelSelector::from_api(&api).unwrap();
        assert_eq!(s.to_string(), "app=web,tier in (fe,be)");
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "fe")])));
        assert!(LabelSelector::from_api(&Api::default())
            .unwrap()
            .is_everything());
        let bad = Api {
            match_expressions: Some(vec![Req {
                key: "x".into(),
                operator: "Exists".into(),
                values: Some(vec!["y".into()]),
            }]),
            ..Default::default()
        };
        assert!(LabelSelector::from_api(&bad).is_err());
        let bad_op = Api {
            match_expressions: Some(vec![Req {
                key: "x".into(),
                operator: "Near".into(),
                values: None,
            }]),
            ..Default::default()
        };
        assert_eq!(
            LabelSelector::from_api(&bad_op).unwrap_err().to_string(),
            "unable to parse requirement: \"Near\" is not a valid label selector operator"
        );
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "a=b",
            "a!=b",
            "a in (x,y)",
            "a notin (x)",
            "a",
            "!a",
            "n>3",
            "a=b,!c",
        ] {
            assert_eq!(sel(s).to_string(), s);
            assert_eq!(sel(&sel(s).to_string()), sel(s));
        }
    }
}
