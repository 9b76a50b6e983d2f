//! The `math` capability: arithmetic over a list of numbers.
//!
//! Every action takes `args`, a non-empty JSON array of numbers (strings,
//! booleans and `null` are rejected, even when they look numeric):
//!
//! | action     | result                                   |
//! |------------|------------------------------------------|
//! | `sum`      | `args[0] + args[1] + …`                  |
//! | `subtract` | `args[0] - args[1] - …` (one arg: itself)|
//! | `multiply` | `args[0] * args[1] * …`                  |
//! | `divide`   | `args[0] / args[1] / …` (two or more)    |
//! | `average`  | the arithmetic mean                      |
//!
//! Results are JSON numbers. When every argument is an integer, `sum`,
//! `subtract` and `multiply` use checked 64-bit integer arithmetic and return
//! an integer (`[1,2,3]` → `6`, never `6.0`); if that overflows they fall back
//! to floating point. Floating-point results that are whole numbers of
//! magnitude below 2^53 are returned as integers too (`divide [6,3]` → `2`,
//! `average [1,2,3]` → `2`), others as floats (`divide [7,2]` → `3.5`).
//! A zero divisor fails with `division_by_zero`; an infinite or NaN result
//! with `overflow`.

use futures::future::BoxFuture;
use jetmesh_shared::capability::{Action, Call, Capability};
use jetmesh_shared::{Error, ErrorCode};

/// Division (or an average of nothing) by zero.
pub const DIVISION_BY_ZERO: ErrorCode = ErrorCode::capability("division_by_zero");
/// A result that does not fit a JSON number jetmesh can carry.
pub const OVERFLOW: ErrorCode = ErrorCode::capability("overflow");
use serde_json::{Map, Number, Value};

/// The parameters of every action but `divide`: `args`, one or more numbers.
const ARGS: &str = r#"{"type":"object","required":["args"],"properties":{
  "args":{"type":"array","minItems":1,"items":{"type":"number"},
          "description":"The numbers, in order."}}}"#;

/// The actions of [`Math`], in the order they are listed to users.
const ACTIONS: &[Action] = &[
    Action {
        name: "sum",
        description: "Adds the numbers in args.",
        params: ARGS,
    },
    Action {
        name: "subtract",
        description: "Subtracts args[1..] from args[0], left to right.",
        params: ARGS,
    },
    Action {
        name: "multiply",
        description: "Multiplies the numbers in args.",
        params: ARGS,
    },
    Action {
        name: "divide",
        description: "Divides args[0] by args[1..], left to right; a zero divisor fails.",
        params: r#"{"type":"object","required":["args"],"properties":{
  "args":{"type":"array","minItems":2,"items":{"type":"number"},
          "description":"The dividend, then one or more divisors."}}}"#,
    },
    Action {
        name: "average",
        description: "The arithmetic mean of the numbers in args.",
        params: ARGS,
    },
];

fn names() -> Vec<&'static str> {
    ACTIONS.iter().map(|a| a.name).collect()
}

/// 2^53: below this magnitude every integer is exactly representable in f64.
const EXACT_F64_LIMIT: f64 = 9_007_199_254_740_992.0;

/// The built-in `math` capability.
#[derive(Debug, Clone, Copy, Default)]
pub struct Math;

impl Capability for Math {
    fn name(&self) -> &'static str {
        "math"
    }

    fn actions(&self) -> &'static [Action] {
        ACTIONS
    }

    fn execute<'a>(&'a self, call: Call<'a>) -> BoxFuture<'a, Result<Value, Error>> {
        Box::pin(async move { run(call.action, call.params) })
    }
}

/// The arithmetic operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Sum,
    Subtract,
    Multiply,
    Divide,
    Average,
}

impl Op {
    fn parse(action: &str) -> Result<Op, Error> {
        Ok(match action {
            "sum" => Op::Sum,
            "subtract" => Op::Subtract,
            "multiply" => Op::Multiply,
            "divide" => Op::Divide,
            "average" => Op::Average,
            other => {
                return Err(Error::new(
                    ErrorCode::UnknownAction,
                    format!(
                        "math has no action {}; the actions are: {}",
                        preview(&Value::from(other)),
                        names().join(", ")
                    ),
                ));
            }
        })
    }
}

/// One argument: an exact integer when JSON gave one that fits in i64,
/// otherwise a float.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }

    fn is_zero(self) -> bool {
        match self {
            Num::Int(i) => i == 0,
            Num::Float(f) => f == 0.0,
        }
    }
}

fn run(action: &str, params: &Map<String, Value>) -> Result<Value, Error> {
    let op = Op::parse(action)?;
    let nums = parse_args(params)?;
    match op {
        Op::Sum => Ok(sum(&nums)),
        Op::Subtract => Ok(subtract(&nums)),
        Op::Multiply => Ok(multiply(&nums)),
        Op::Divide => divide(&nums),
        Op::Average => Ok(average(&nums)),
    }
    .and_then(finite)
}

/// Reads `args` as a non-empty array of JSON numbers.
fn parse_args(params: &Map<String, Value>) -> Result<Vec<Num>, Error> {
    let items = match params.get("args") {
        None | Some(Value::Null) => {
            return Err(Error::invalid_args(
                "args is missing; math actions need args, a non-empty array of numbers such as [1, 2, 3]",
            ));
        }
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(Error::invalid_args(format!(
                "args must be an array of numbers such as [1, 2, 3], not {}",
                describe(other)
            )));
        }
    };
    if items.is_empty() {
        return Err(Error::invalid_args(
            "args is empty; math actions need at least one number",
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::Number(n) => Ok(number(n)),
            other => Err(Error::invalid_args(format!(
                "args must be an array of numbers; args[{i}] is {}",
                describe(other)
            ))),
        })
        .collect()
}

fn number(n: &Number) -> Num {
    match n.as_i64() {
        Some(i) => Num::Int(i),
        // Integers above i64::MAX and all non-integers.
        None => Num::Float(n.as_f64().unwrap_or(f64::NAN)),
    }
}

/// All the arguments as i64, if every one is an integer.
fn all_ints(nums: &[Num]) -> Option<Vec<i64>> {
    nums.iter()
        .map(|n| match n {
            Num::Int(i) => Some(*i),
            Num::Float(_) => None,
        })
        .collect()
}

fn floats(nums: &[Num]) -> impl Iterator<Item = f64> + '_ {
    nums.iter().map(|n| n.as_f64())
}

/// Folds `nums` with a checked integer operation when they are all integers,
/// or with the float operation otherwise (and on integer overflow).
fn fold(nums: &[Num], int_op: fn(i64, i64) -> Option<i64>, float_op: fn(f64, f64) -> f64) -> Value {
    if let Some(ints) = all_ints(nums) {
        let exact = ints[1..].iter().try_fold(ints[0], |acc, &x| int_op(acc, x));
        if let Some(result) = exact {
            return Value::from(result);
        }
    }
    let mut values = floats(nums);
    let first = values.next().unwrap_or(0.0);
    float_value(values.fold(first, float_op))
}

fn sum(nums: &[Num]) -> Value {
    fold(nums, i64::checked_add, |a, b| a + b)
}

fn subtract(nums: &[Num]) -> Value {
    fold(nums, i64::checked_sub, |a, b| a - b)
}

fn multiply(nums: &[Num]) -> Value {
    fold(nums, i64::checked_mul, |a, b| a * b)
}

fn divide(nums: &[Num]) -> Result<Value, Error> {
    if nums.len() < 2 {
        return Err(Error::invalid_args(format!(
            "divide needs at least two numbers (a dividend and a divisor); args has {}",
            nums.len()
        )));
    }
    if let Some(i) = nums.iter().skip(1).position(|n| n.is_zero()) {
        return Err(Error::new(
            DIVISION_BY_ZERO,
            format!("cannot divide by zero: the divisor args[{}] is 0", i + 1),
        ));
    }
    // Exact integer division while every step divides evenly.
    if let Some(ints) = all_ints(nums) {
        let exact = ints[1..].iter().try_fold(ints[0], |acc, &x| {
            (acc.checked_rem(x)? == 0).then(|| acc.checked_div(x))?
        });
        if let Some(result) = exact {
            return Ok(Value::from(result));
        }
    }
    let mut values = floats(nums);
    let first = values.next().unwrap_or(0.0);
    Ok(float_value(values.fold(first, |a, b| a / b)))
}

fn average(nums: &[Num]) -> Value {
    let n = nums.len();
    if let Some(ints) = all_ints(nums) {
        // An i128 cannot overflow summing fewer than 2^64 i64 values.
        let total: i128 = ints.iter().map(|&i| i128::from(i)).sum();
        let count = n as i128;
        if total % count == 0
            && let Ok(mean) = i64::try_from(total / count)
        {
            return Value::from(mean);
        }
        return float_value(total as f64 / n as f64);
    }
    let total: f64 = floats(nums).sum();
    if total.is_finite() {
        float_value(total / n as f64)
    } else {
        // The sum overflowed; the mean itself may still be finite.
        float_value(floats(nums).map(|x| x / n as f64).sum())
    }
}

/// A float as a JSON number: an integer when it is a whole number that f64
/// represents exactly, `null` (caught by [`finite`]) when it is not finite.
fn float_value(x: f64) -> Value {
    if x.is_finite() && x.fract() == 0.0 && x.abs() < EXACT_F64_LIMIT {
        // Exact: |x| < 2^53, so the cast neither rounds nor saturates.
        return Value::from(x as i64);
    }
    Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// Turns a non-finite result (encoded as `null`) into an `overflow` error.
fn finite(v: Value) -> Result<Value, Error> {
    match v {
        Value::Null => Err(Error::new(
            OVERFLOW,
            "the result is too large to represent (it is infinite or not a number)",
        )),
        v => Ok(v),
    }
}

/// A JSON value with its type, for error messages: `the string "x"`, `null`.
fn describe(v: &Value) -> String {
    let kind = match v {
        Value::Null => return "null".to_string(),
        Value::Bool(_) => "the boolean",
        Value::Number(_) => "the number",
        Value::String(_) => "the string",
        Value::Array(_) => "the array",
        Value::Object(_) => "the object",
    };
    format!("{kind} {}", preview(v))
}

/// A short rendering of a JSON value for error messages.
fn preview(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 {
        let head: String = s.chars().take(37).collect();
        format!("{head}...")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            other => panic!("params must be an object, got {other}"),
        }
    }

    fn exec(action: &str, p: Value) -> Result<Value, Error> {
        let p = params(p);
        futures::executor::block_on(Math.execute(Call::bare(action, &p)))
    }

    fn ok(action: &str, args: Value) -> Value {
        exec(action, json!({ "args": args }))
            .unwrap_or_else(|e| panic!("{action} {args} failed: {e}"))
    }

    fn err(action: &str, p: Value) -> Error {
        match exec(action, p.clone()) {
            Ok(v) => panic!("{action} {p} should fail, got {v}"),
            Err(e) => e,
        }
    }

    /// Asserts the result and its JSON text, so `6` and `6.0` are told apart.
    fn assert_json(v: Value, text: &str) {
        assert_eq!(v.to_string(), text, "value {v:?}");
    }

    #[test]
    fn name_and_actions() {
        assert_eq!(Math.name(), "math");
        assert_eq!(
            names(),
            &["sum", "subtract", "multiply", "divide", "average"]
        );
    }

    #[test]
    fn seed_examples_are_integers() {
        let six = ok("sum", json!([1, 2, 3]));
        assert_eq!(six, json!(6));
        assert!(six.is_i64());
        assert_json(six, "6");
        assert_json(ok("multiply", json!([5, 6])), "30");
    }

    #[test]
    fn sum() {
        assert_json(ok("sum", json!([42])), "42");
        assert_json(ok("sum", json!([-5, 3])), "-2");
        assert_json(ok("sum", json!([1.5, 2.25])), "3.75");
        assert_json(ok("sum", json!([0.1, 0.2])), "0.30000000000000004");
        // A float sum that is a whole number comes back as an integer.
        assert_json(ok("sum", json!([1.5, 0.5])), "2");
        assert_json(ok("sum", json!([1, 2.5])), "3.5");
    }

    #[test]
    fn subtract() {
        assert_json(ok("subtract", json!([10, 3, 2])), "5");
        assert_json(ok("subtract", json!([7])), "7");
        assert_json(ok("subtract", json!([3, 10])), "-7");
        assert_json(ok("subtract", json!([5.5, 0.25])), "5.25");
    }

    #[test]
    fn multiply() {
        assert_json(ok("multiply", json!([2, 3, 4])), "24");
        assert_json(ok("multiply", json!([-2, 3])), "-6");
        assert_json(ok("multiply", json!([0, 5])), "0");
        assert_json(ok("multiply", json!([2.5, 2])), "5");
        assert_json(ok("multiply", json!([1.5, 1.5])), "2.25");
        assert_json(ok("multiply", json!([9])), "9");
    }

    #[test]
    fn divide() {
        assert_json(ok("divide", json!([6, 3])), "2");
        assert_json(ok("divide", json!([7, 2])), "3.5");
        assert_json(ok("divide", json!([100, 5, 2])), "10");
        assert_json(ok("divide", json!([1, 3])), &(1.0f64 / 3.0).to_string());
        assert_json(ok("divide", json!([-9, 3])), "-3");
        assert_json(ok("divide", json!([7.5, 2.5])), "3");
        // Not evenly divisible at the first step, whole at the end.
        assert_json(ok("divide", json!([9, 2, 0.5])), "9");
        // Exact integer division beyond 2^53.
        assert_json(
            ok("divide", json!([9_007_199_254_740_993_i64, 1])),
            "9007199254740993",
        );
    }

    #[test]
    fn average() {
        assert_json(ok("average", json!([1, 2, 3])), "2");
        assert_json(ok("average", json!([1, 2])), "1.5");
        assert_json(ok("average", json!([5])), "5");
        assert_json(ok("average", json!([1.5, 2.5])), "2");
        assert_json(ok("average", json!([-1, -2])), "-1.5");
        // The integer sum would overflow i64, the mean does not.
        assert_json(
            ok("average", json!([i64::MAX, i64::MAX])),
            &i64::MAX.to_string(),
        );
        // The float sum is infinite, the mean is not.
        let v = ok("average", json!([1e308, 1e308]));
        assert_eq!(v.as_f64(), Some(1e308));
    }

    #[test]
    fn integer_overflow_falls_back_to_float() {
        let v = ok("sum", json!([i64::MAX, 1]));
        assert!(v.is_f64(), "{v}");
        assert_eq!(v.as_f64(), Some(i64::MAX as f64 + 1.0));

        let v = ok("subtract", json!([i64::MIN, 1]));
        assert!(v.is_f64(), "{v}");
        assert_eq!(v.as_f64(), Some(i64::MIN as f64 - 1.0));

        let v = ok("multiply", json!([i64::MAX, 2]));
        assert!(v.is_f64(), "{v}");
        assert_eq!(v.as_f64(), Some(i64::MAX as f64 * 2.0));

        // i64::MIN / -1 does not fit in i64.
        let v = ok("divide", json!([i64::MIN, -1]));
        assert_eq!(v.as_f64(), Some(-(i64::MIN as f64)));

        // Integers larger than i64::MAX arrive as u64 and are used as floats.
        let v = ok("sum", json!([u64::MAX, 1]));
        assert_eq!(v.as_f64(), Some(u64::MAX as f64 + 1.0));
    }

    #[test]
    fn whole_floats_at_or_above_2_pow_53_stay_floats() {
        let v = ok("multiply", json!([4503599627370496.0_f64, 2.0]));
        assert!(v.is_f64(), "{v}");
        let v = ok("multiply", json!([4503599627370496.0_f64, 1.5]));
        assert_json(v, "6755399441055744");
    }

    #[test]
    fn non_finite_results_are_overflow() {
        for (action, args) in [
            ("sum", json!([1e308, 1e308])),
            ("subtract", json!([-1e308, 1e308])),
            ("multiply", json!([1e200, 1e200])),
            ("divide", json!([1e308, 1e-308])),
        ] {
            let e = err(action, json!({ "args": args }));
            assert_eq!(e.code, OVERFLOW, "{action} {args}: {e}");
            assert!(e.message.contains("too large"), "{}", e.message);
        }
    }

    #[test]
    fn division_by_zero() {
        for args in [
            json!([1, 0]),
            json!([0, 0]),
            json!([1, 2, 0]),
            json!([1.5, 0.0]),
            json!([1, -0.0]),
        ] {
            let e = err("divide", json!({ "args": args }));
            assert_eq!(e.code, DIVISION_BY_ZERO, "{args}: {e}");
        }
        let e = err("divide", json!({"args": [8, 2, 0]}));
        assert!(e.message.contains("args[2]"), "{}", e.message);
        // A zero dividend is fine.
        assert_json(ok("divide", json!([0, 5])), "0");
    }

    #[test]
    fn divide_needs_two_numbers() {
        let e = err("divide", json!({"args": [4]}));
        assert_eq!(e.code, ErrorCode::InvalidArgs);
        assert!(e.message.contains("at least two"), "{}", e.message);
    }

    #[test]
    fn missing_or_malformed_args_are_invalid() {
        let registered = jetmesh_shared::capability::registered(&Math).unwrap();
        for action in names() {
            for p in [
                json!({}),
                json!({"args": null}),
                json!({"args": []}),
                json!({"args": 5}),
                json!({"args": "1,2"}),
                json!({"args": {"a": 1}}),
                json!({"args": [1, "2"]}),
                json!({"args": ["2.5"]}),
                json!({"args": [true]}),
                json!({"args": [null]}),
                json!({"args": [[1]]}),
                json!({"values": [1, 2]}),
            ] {
                let e = err(action, p.clone());
                assert_eq!(e.code, ErrorCode::InvalidArgs, "{action} {p}: {e}");
                // The schema the router checks refuses it too, first.
                let map = params(p.clone());
                let e = registered.check_params("t1", action, &map).unwrap_err();
                assert_eq!(e.code, ErrorCode::InvalidArgs, "{action} {p}: {e}");
            }
            let one = params(json!({"args": [1]}));
            if action == "divide" {
                let e = registered.check_params("t1", action, &one).unwrap_err();
                assert!(
                    e.message.ends_with("args: value has less than 2 items"),
                    "{}",
                    e.message
                );
            }
            let good = params(json!({"args": [6, 3]}));
            registered.check_params("t1", action, &good).unwrap();
        }
    }

    #[test]
    fn error_messages_name_the_problem() {
        let e = err("sum", json!({"args": [1, 2, "x"]}));
        assert_eq!(
            e.message,
            "args must be an array of numbers; args[2] is the string \"x\""
        );
        let e = err("sum", json!({"args": [null]}));
        assert_eq!(
            e.message,
            "args must be an array of numbers; args[0] is null"
        );
        let e = err("sum", json!({}));
        assert!(e.message.starts_with("args is missing"), "{}", e.message);
        let e = err("sum", json!({"args": []}));
        assert!(e.message.starts_with("args is empty"), "{}", e.message);
        let e = err("sum", json!({"args": "1,2"}));
        assert_eq!(
            e.message,
            "args must be an array of numbers such as [1, 2, 3], not the string \"1,2\""
        );
        let long = "y".repeat(100);
        let e = err("sum", json!({"args": [long]}));
        assert!(e.message.len() < 120, "{}", e.message);
        assert!(e.message.ends_with("..."), "{}", e.message);
    }

    #[test]
    fn unknown_action() {
        let e = err("pow", json!({"args": [2, 3]}));
        assert_eq!(e.code, ErrorCode::UnknownAction);
        assert_eq!(
            e.message,
            "math has no action \"pow\"; the actions are: sum, subtract, multiply, divide, average"
        );
        // The action is checked before the arguments.
        assert_eq!(err("Sum", json!({})).code, ErrorCode::UnknownAction);
    }

    #[test]
    fn extra_params_are_ignored() {
        let v = exec("sum", json!({"args": [1, 2], "note": "hi"})).unwrap();
        assert_json(v, "3");
    }
}
