//! A turn's usage as the store records it: the tokens its steps reported, summed, and their
//! cost at the run's model's price (`None` when the price is unknown).

use crush_protocol::ModelPrice;

use crate::model::Usage;
use crate::model::price::cost;
use crate::store::TurnUsage;

pub(super) fn turn_usage(usage: &Usage, price: Option<&ModelPrice>) -> TurnUsage {
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    TurnUsage {
        input_tokens: n(usage.prompt_tokens),
        output_tokens: n(usage.completion_tokens),
        cached_tokens: n(usage.cached_tokens),
        reasoning_tokens: n(usage.reasoning_tokens),
        cost: cost(price, usage),
    }
}
