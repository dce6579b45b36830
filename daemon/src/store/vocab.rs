//! The stored names read back as the protocol's types. The `runs.state` and
//! `messages.finish_reason` columns hold the wire names (the schema's `CHECK` constraints admit no
//! others) and `parts` the parts' JSON; `query_as!` fills rows with the text as stored, so the
//! conversion is made here, once, for every reader.

use crush_protocol::{FinishReason, Part, RunState, Usage};

use super::{MessageRow, Result, RunRow, SessionRow, StoreError, TurnUsage};

fn decode(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Db(sqlx::Error::Decode(Box::new(e)))
}

impl RunRow {
    /// The run's state.
    pub fn run_state(&self) -> Result<RunState> {
        self.state.parse().map_err(decode)
    }
}

/// A count the daemon wrote, read back (never negative: only sums of provider counts).
fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl From<TurnUsage> for Usage {
    fn from(u: TurnUsage) -> Self {
        Usage {
            input_tokens: count(u.input_tokens),
            output_tokens: count(u.output_tokens),
            cached_tokens: count(u.cached_tokens),
            reasoning_tokens: count(u.reasoning_tokens),
            cost: u.cost,
        }
    }
}

impl RunRow {
    /// The turn's usage, once its last write recorded it (the token columns are written
    /// together); `None` before, and for a run folded into another's turn.
    pub fn usage(&self) -> Option<Usage> {
        Some(
            TurnUsage {
                input_tokens: self.input_tokens?,
                output_tokens: self.output_tokens?,
                cached_tokens: self.cached_tokens.unwrap_or(0),
                reasoning_tokens: self.reasoning_tokens.unwrap_or(0),
                cost: self.cost,
            }
            .into(),
        )
    }
}

impl SessionRow {
    /// The session's totals; the cost is unknown once any of its tokens had no price.
    pub fn usage(&self) -> Usage {
        Usage {
            input_tokens: count(self.prompt_tokens),
            output_tokens: count(self.completion_tokens),
            cached_tokens: count(self.cached_tokens),
            reasoning_tokens: count(self.reasoning_tokens),
            cost: (self.unpriced_tokens == 0).then_some(self.cost),
        }
    }
}

impl MessageRow {
    /// Why the message ended; `None` while it streams.
    pub fn finish(&self) -> Result<Option<FinishReason>> {
        self.finish_reason
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(decode)
    }

    /// The message's parts; an error when the stored text is not a JSON array (it always is:
    /// only the daemon writes it). Each reader decides what an unreadable message shows.
    pub fn part_list(&self) -> serde_json::Result<Vec<Part>> {
        serde_json::from_str(&self.parts)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// The quoted literals of a SQL text.
    fn literals(sql: &str) -> Vec<&str> {
        sql.split('\'').skip(1).step_by(2).collect()
    }

    /// Every query's SQL, from the offline metadata `query!` is checked against.
    fn queries() -> Vec<String> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.sqlx");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            out.push(v["query"].as_str().unwrap().to_owned());
        }
        assert!(!out.is_empty(), "no query metadata in {}", dir.display());
        out
    }

    /// SQL spells states and finish reasons as literals (they are the stored schema); each must
    /// be a name of its enum, so renaming a variant's wire name breaks this test, not the data.
    #[test]
    fn every_state_and_finish_reason_the_sql_uses_is_a_name_of_its_type() {
        const OTHER: &[&str] = &[
            "user",
            "assistant",
            "tool",
            "system",
            "table",
            "_sqlx_migrations",
        ];
        // JSON paths (`'$.runId'`) are not names either.
        let other = |lit: &str| OTHER.contains(&lit) || lit.starts_with("$.");
        let mut seen_state = 0;
        let mut seen_finish = 0;
        for sql in queries() {
            for line in sql.lines() {
                for lit in literals(line) {
                    if line.contains("finish_reason") && !other(lit) {
                        lit.parse::<FinishReason>().unwrap();
                        seen_finish += 1;
                    } else if line.contains("state") && !other(lit) {
                        lit.parse::<RunState>().unwrap();
                        seen_state += 1;
                    }
                }
            }
            for lit in literals(&sql) {
                assert!(
                    other(lit)
                        || lit.parse::<RunState>().is_ok()
                        || lit.parse::<FinishReason>().is_ok(),
                    "{lit:?} in {sql}"
                );
            }
        }
        assert!(seen_state > 0 && seen_finish > 0);
    }

    /// The schema's `CHECK` lists are exactly the enums' names.
    #[test]
    fn the_schema_admits_exactly_the_names_of_the_types() {
        let schema = include_str!("../../migrations/0001_initial.sql");
        let check = |column: &str| -> Vec<String> {
            let at = schema.find(&format!("{column} ")).unwrap();
            let rest = &schema[at..];
            let open = rest.find("IN").unwrap();
            let close = rest.find(')').unwrap();
            literals(&rest[open..close])
                .into_iter()
                .map(str::to_owned)
                .collect()
        };
        let names = |all: &[&str]| all.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            check("state"),
            names(&RunState::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>())
        );
        assert_eq!(
            check("finish_reason"),
            names(
                &FinishReason::ALL
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
            )
        );
    }
}
