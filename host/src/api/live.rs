//! `live("name", args..)` in scripts: call the newest accepted version of a recipe function.

use rhai::plugin::*;
use rhai::{Dynamic, NativeCallContext};

use crate::api::args::RhaiResult;
use crate::{live, session};

/// Calls `name` through the live registry at the session's current step.
fn call(ctx: &NativeCallContext, name: &str, args: Vec<Dynamic>) -> RhaiResult<Dynamic> {
    let step = session::with(|s| s.step);
    live::call(ctx.engine(), name, args, step)
}

/// Live functions: edit the recipe while it runs.
#[export_module]
pub mod live_api {
    use rhai::{Dynamic, NativeCallContext};

    use crate::api::args::RhaiResult;

    use super::call;

    /// Calls the newest accepted version of the recipe's fn `name` (no arguments).
    ///
    /// ```rhai
    /// fn warmup_steps() { 500 }
    /// let w = live("warmup_steps");
    /// ```
    #[rhai_fn(name = "live", return_raw)]
    pub fn live0(ctx: NativeCallContext, name: &str) -> RhaiResult<Dynamic> {
        call(&ctx, name, vec![])
    }

    /// Calls the newest accepted version of the recipe's fn `name` with one argument.
    ///
    /// ```rhai
    /// fn lr(step) { 0.1 }
    /// let rate = live("lr", 10);
    /// ```
    #[rhai_fn(name = "live", return_raw)]
    pub fn live1(ctx: NativeCallContext, name: &str, a: Dynamic) -> RhaiResult<Dynamic> {
        call(&ctx, name, vec![a])
    }

    /// Calls the newest accepted version of the recipe's fn `name` with two arguments.
    ///
    /// ```rhai
    /// fn lr(step, total) { warmup_cosine(step, total, total / 10, 1.0, 0.0) }
    /// opt.step(loss, live("lr", b.step, total));
    /// ```
    #[rhai_fn(name = "live", return_raw)]
    pub fn live2(
        ctx: NativeCallContext,
        name: &str,
        a: Dynamic,
        b: Dynamic,
    ) -> RhaiResult<Dynamic> {
        call(&ctx, name, vec![a, b])
    }

    /// Calls the newest accepted version of the recipe's fn `name` with three arguments.
    ///
    /// ```rhai
    /// fn loss_fn(p, z, t) { nt_xent(p, z, t) }
    /// let loss = live("loss_fn", z1, z2, 0.5);
    /// ```
    #[rhai_fn(name = "live", return_raw)]
    pub fn live3(
        ctx: NativeCallContext,
        name: &str,
        a: Dynamic,
        b: Dynamic,
        c: Dynamic,
    ) -> RhaiResult<Dynamic> {
        call(&ctx, name, vec![a, b, c])
    }

    /// Calls the newest accepted version of the recipe's fn `name` with four arguments.
    ///
    /// ```rhai
    /// let loss = live("objective", p1, p2, z1, z2);
    /// ```
    #[rhai_fn(name = "live", return_raw)]
    pub fn live4(
        ctx: NativeCallContext,
        name: &str,
        a: Dynamic,
        b: Dynamic,
        c: Dynamic,
        d: Dynamic,
    ) -> RhaiResult<Dynamic> {
        call(&ctx, name, vec![a, b, c, d])
    }

    /// Calls the newest accepted version of the recipe's fn `name` with five arguments.
    ///
    /// ```rhai
    /// let loss = live("info_nce_loss", q, k, queue, 0.2, 1.0);
    /// ```
    #[rhai_fn(name = "live", return_raw)]
    pub fn live5(
        ctx: NativeCallContext,
        name: &str,
        a: Dynamic,
        b: Dynamic,
        c: Dynamic,
        d: Dynamic,
        e: Dynamic,
    ) -> RhaiResult<Dynamic> {
        call(&ctx, name, vec![a, b, c, d, e])
    }
}
