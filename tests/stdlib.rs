//! The stdlib losses and schedules against values computed by hand.

use std::path::Path;

use sslhost::engine;
use sslhost::session::Session;

fn eval(expr: &str) -> f64 {
    let v = engine::run_source(
        "stdlib-test",
        expr,
        Path::new("."),
        Session::new(sslhost::device::cpu(), 0),
    )
    .unwrap_or_else(|e| panic!("{expr}: {e}"));
    v.as_float()
        .unwrap_or_else(|_| panic!("{expr}: not a float: {v}"))
}

/// The error message of `expr`, which must fail.
fn error_of(expr: &str) -> String {
    engine::run_source(
        "stdlib-test",
        expr,
        Path::new("."),
        Session::new(sslhost::device::cpu(), 0),
    )
    .expect_err(expr)
    .to_string()
}

fn close(expr: &str, want: f64) {
    let got = eval(expr);
    assert!((got - want).abs() < 1e-5, "{expr} = {got}, want {want}");
}

#[test]
fn losses() {
    // BYOL: 2 - 2 cos; orthogonal -> 2, equal -> 0, opposite -> 4, batch mean of the rows.
    close(
        "byol_loss(tensor([[1.0, 0.0]]), tensor([[0.0, 3.0]])).item()",
        2.0,
    );
    close(
        "byol_loss(tensor([[1.0, 2.0]]), tensor([[2.0, 4.0]])).item()",
        0.0,
    );
    close(
        "byol_loss(tensor([[1.0, 0.0]]), tensor([[-1.0, 0.0]])).item()",
        4.0,
    );
    close(
        "byol_loss(tensor([[1.0, 0.0], [1.0, 0.0]]), tensor([[0.0, 1.0], [1.0, 0.0]])).item()",
        1.0,
    );
    close(
        "negative_cosine_similarity(tensor([[1.0, 1.0]]), tensor([[2.0, 2.0]])).item()",
        -1.0,
    );
    // Cross-entropy of equal logits over two classes: ln 2; labels as ints or whole floats.
    close(
        "cross_entropy(tensor([[0.0, 0.0]]), tensor([0]).int()).item()",
        2f64.ln(),
    );
    close(
        "cross_entropy(tensor([[2.0, 0.0]]), tensor([1.0])).item()",
        2.0 + (1.0 + (-2f64).exp()).ln(),
    );
    // NT-Xent with z1 = z2 = I (2x2), T = 1: each view sees its partner at similarity 1 and
    // two others at 0: -log(e / (e + 2)) = ln(e + 2) - 1.
    close(
        "nt_xent(tensor([[1.0, 0.0], [0.0, 1.0]]), tensor([[1.0, 0.0], [0.0, 1.0]]), 1.0).item()",
        (std::f64::consts::E + 2.0).ln() - 1.0,
    );
    // The same at T = 0.5: logits 2 (partner) and 0, 0.
    close(
        "nt_xent(tensor([[1.0, 0.0], [0.0, 1.0]]), tensor([[1.0, 0.0], [0.0, 1.0]]), 0.5).item()",
        (2f64.exp() + 2.0).ln() - 2.0,
    );
    // InfoNCE: q = k = [1, 0]; queue [0, 1] and [-1, 0]; T = 1: logits 1, 0, -1.
    close(
        "info_nce(tensor([[1.0, 0.0]]), tensor([[2.0, 0.0]]), tensor([[0.0, 1.0], [-1.0, 0.0]]), 1.0).item()",
        (std::f64::consts::E + 1.0 + (-1f64).exp()).ln() - 1.0,
    );
}

#[test]
fn schedules_at_their_edges() {
    close("cosine_schedule(0, 10, 1.0, 0.0)", 1.0);
    close("cosine_schedule(9, 10, 1.0, 0.0)", 0.0);
    close("cosine_schedule(20, 10, 1.0, 0.0)", 0.0);
    close("cosine_schedule(5, 11, 0.99, 1.0)", 0.995);
    // No room for a curve: the end value.
    close("cosine_schedule(0, 1, 1.0, 0.0)", 0.0);
    close("cosine_schedule(0, 0, 0.5, 0.25)", 0.25);
    // Warm-up: peak / warmup at step 0, the peak at the last warm-up step and the first
    // cosine step, the end value at the last step.
    close("warmup_cosine(0, 100, 10, 1.0, 0.0)", 0.1);
    close("warmup_cosine(9, 100, 10, 1.0, 0.0)", 1.0);
    close("warmup_cosine(10, 100, 10, 1.0, 0.0)", 1.0);
    close("warmup_cosine(99, 100, 10, 1.0, 0.0)", 0.0);
    // No warm-up at all, and a warm-up as long as the run.
    close("warmup_cosine(0, 10, 0, 1.0, 0.0)", 1.0);
    close("warmup_cosine(4, 5, 5, 2.0, 0.0)", 2.0);
}

#[test]
fn embedding_std_separates_collapse_from_spread() {
    // Every row the same direction (scale does not matter after normalising): collapse, 0.
    close(
        "embedding_std(tensor([[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]])).item()",
        0.0,
    );
    // Rows +e1, -e1, +e2, -e2: dimension 0 holds 1, -1, 0, 0 (std sqrt(1/2)), dimension 1
    // the same; the mean of the two is sqrt(1/2) = 1 / sqrt(D) for D = 2.
    close(
        "embedding_std(tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])).item()",
        0.5f64.sqrt(),
    );
}

#[test]
fn knn_monitor_runs_at_epoch_ends_and_at_the_last_step() {
    // 10 steps per epoch, 35 steps in all.
    let due = |step: i64, every: i64| {
        eval(&format!(
            "if knn_due({step}, 10, {every}, 35) {{ 1.0 }} else {{ 0.0 }}"
        )) == 1.0
    };
    assert!(due(9, 1) && due(19, 1) && due(29, 1));
    assert!(!due(10, 1) && !due(0, 1));
    assert!(!due(9, 2) && due(19, 2));
    // The last step always evaluates; every = 0 evaluates only there.
    assert!(due(34, 0) && due(34, 3));
    assert!(!due(9, 0) && !due(29, 0));
}

#[test]
fn cross_entropy_rejects_bad_labels() {
    for (expr, says) in [
        (
            "cross_entropy(tensor([[0.0, 0.0]]), tensor([2]).int())",
            "outside 0..2",
        ),
        (
            "cross_entropy(tensor([[0.0, 0.0]]), tensor([0.5]))",
            "whole numbers",
        ),
        (
            "cross_entropy(tensor([[0.0, 0.0], [1.0, 1.0]]), tensor([0]).int())",
            "labels of shape [2]",
        ),
        (
            "cross_entropy(tensor([0.0, 0.0]), tensor([0]).int())",
            "[N, C]",
        ),
    ] {
        let err = error_of(expr);
        assert!(err.contains(says), "{expr}: {err}");
    }
}

#[test]
fn contrastive_losses_read_the_device_only_for_their_value() {
    // nt_xent's and info_nce's labels are vectors the host made (arange, zeros, cat of them):
    // checking them reads the host's copy, so building a loss costs no device read (on a GPU,
    // a sync that waits for the forwards) and the step's one read is its value.
    let reads = eval(
        "let z1 = randn([8, 4]); let z2 = randn([8, 4]); let queue = randn([16, 4]);
         let before = device_reads();
         let loss = nt_xent(z1, z2, 0.5) + info_nce(z1, z2, queue, 0.2);
         let built = device_reads();
         let value = loss.item();
         ((built - before) * 10 + device_reads() - built).to_float()",
    );
    assert_eq!(
        reads, 1.0,
        "reads while building the losses * 10 + reads of the value"
    );
    // The host's copy holds the device's values: the same loss with labels only the device
    // knows (`* 1` makes a new tensor) is equal.
    for labels in [
        "cat([arange(3, 5), arange(0, 1), arange(5, 6)], 0)",
        "zeros([4])",
    ] {
        close(
            &format!(
                "let logits = randn([4, 6]);
                 let labels = {labels};
                 let here = cross_entropy(logits, labels).item();
                 let there = cross_entropy(logits, labels * 1).item();
                 if here == there {{ 0.0 }} else {{ 1.0 }}"
            ),
            0.0,
        );
    }
}

#[test]
fn burn_style_slices_take_one_range_per_dimension() {
    let x = "let x = arange(0, 24).float().reshape([4, 6]);";
    // Rows 1..3, columns 0..=1: [[6, 7], [12, 13]].
    close(&format!("{x} x.slice([1..3, 0..=1]).sum().item()"), 38.0);
    close(&format!("{x} x.slice([1..3, 0..=1]).shape()[1] * 1.0"), 2.0);
    // Trailing dimensions kept whole; negative ends count from the end.
    close(&format!("{x} x.slice([0..1]).sum().item()"), 15.0);
    close(&format!("{x} x.slice([0..1, -2..6]).sum().item()"), 9.0);
    let e = error_of(&format!("{x} x.slice([0..1, \"a\"])"));
    assert!(e.contains("entry 1 must be a range"), "{e}");
}

#[test]
fn decorrelation_losses_match_hand_values() {
    // Barlow Twins on identical views whose two columns are the same +-1 pattern: every
    // entry of C is c = 1 / (1 + 1e-5) (the standardised columns), so the loss is
    // 2 (1 - c)^2 + lambda * 2 c^2.
    let c = 1.0 / (1.0 + 1e-5_f64);
    close(
        "let z = tensor([[1.0, 1.0], [-1.0, -1.0]]); barlow_twins_loss(z, z, 0.5).item()",
        2.0 * (1.0 - c).powi(2) + 0.5 * 2.0 * c * c,
    );
    // Decorrelated, unit-variance columns: C = I up to the epsilon, the loss ~ 0.
    close(
        "let z = tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]]); \
         barlow_twins_loss(z, z, 0.0051).item()",
        2.0 * (1.0 - c).powi(2),
    );
    // VICReg on z = [[1, 0], [-1, 0]] twice: no invariance term; column 0 has std
    // sqrt(2 + 1e-4) > 1 (no penalty), column 1 std 0.01 (penalty 0.99), so variance is
    // 0.99 / 2 per branch; the covariance [[2, 0], [0, 0]] has no off-diagonal.
    close(
        "let z = tensor([[1.0, 0.0], [-1.0, 0.0]]); vicreg_loss(z, z, 25.0, 25.0, 1.0).item()",
        25.0 * 0.99,
    );
    // Covariance: two perfectly correlated columns of variance 2/1: cov = [[2, 2], [2, 2]]
    // (unbiased, N = 2), off-diagonal squares 8, over D = 2.
    close(
        "vicreg_covariance(tensor([[1.0, 1.0], [-1.0, -1.0]])).item()",
        4.0,
    );
}

/// UniGrad's loss has the paper's per-sample gradient: d loss / d u_i = (-um_i + lambda F u_i) / N.
#[test]
fn unigrad_gradient_is_the_closed_form() {
    let diff = eval(
        r#"
        let u = randn([6, 4]).normalize(1).require_grad();
        let um = randn([6, 4]).normalize(1);
        let um2 = randn([6, 4]).normalize(1);
        let f = unigrad_correlation(um, um2);
        let lambda = 100.0;
        let g = unigrad_loss(u, um, f, lambda).backward();
        let want = (lambda * u.detach().matmul(f) - um) / 6;
        (g.get(u) - want).abs().max().item()
        "#,
    );
    assert!(diff < 1e-4, "largest gradient difference {diff}");
    // The correlation is symmetric and has trace 1 (unit rows): (1 + 1) / 2.
    close(
        "let a = randn([5, 3]).normalize(1); let b = randn([5, 3]).normalize(1); \
         let f = unigrad_correlation(a, b); (f - f.t()).abs().max().item()",
        0.0,
    );
    close(
        "let a = randn([5, 3]).normalize(1); let b = randn([5, 3]).normalize(1); \
         unigrad_correlation(a, b).diag().sum().item()",
        1.0,
    );
}

#[test]
fn in_batch_contrastive_losses_match_hand_values() {
    // q = k = I (2x2), T = 1: each query sees its key at cosine 1 and the other at 0:
    // -log(e / (e + 1)) = ln(e + 1) - 1; MoCo v3 scales by 2T.
    let one = (1f64.exp() + 1.0).ln() - 1.0;
    close(
        "in_batch_info_nce(tensor([[1.0, 0.0], [0.0, 2.0]]), tensor([[3.0, 0.0], [0.0, 1.0]]), 1.0).item()",
        one,
    );
    // T = 0.5: logits 2 and 0; times 2T = 1.
    let half = (2f64.exp() + 1.0).ln() - 2.0;
    close(
        "mocov3_loss(tensor([[1.0, 0.0], [0.0, 1.0]]), tensor([[1.0, 0.0], [0.0, 1.0]]), 0.5).item()",
        half,
    );
}

#[test]
fn nearest_neighbours_take_the_closest_support_rows() {
    // Support rows: x, y, -x (unit). The query (2, 0.1) is closest to x; (-1, -0.2) to -x;
    // (0.1, 5) to y.
    let prelude = "let s = tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]); \
                   let nn = nearest_neighbours(tensor([[2.0, 0.1], [-1.0, -0.2], [0.1, 5.0]]), s);";
    close(&format!("{prelude} nn.slice([0..1, 0..1]).item()"), 1.0);
    close(&format!("{prelude} nn.slice([1..2, 0..1]).item()"), -1.0);
    close(&format!("{prelude} nn.slice([2..3, 1..2]).item()"), 1.0);
    close(&format!("{prelude} nn.shape[0].to_float()"), 3.0);
}

#[test]
fn sinkhorn_balances_prototypes_and_samples() {
    // 4 samples, 3 prototypes: every row sums to 1, every column to 4 / 3 (equal shares),
    // after 3 iterations on random scores, to within Sinkhorn's convergence.
    let prelude = "let q = sinkhorn(randn([4, 3]), 0.5, 3);";
    for row in 0..4 {
        close(
            &format!("{prelude} q.slice([{row}..{}, 0..3]).sum().item()", row + 1),
            1.0,
        );
    }
    for col in 0..3 {
        let got = eval(&format!(
            "{prelude} q.slice([0..4, {col}..{}]).sum().item()",
            col + 1
        ));
        assert!((got - 4.0 / 3.0).abs() < 0.05, "column {col}: {got}");
    }
    // Scores far apart in scale (cosines / 0.05 reach e^40) stay finite.
    let got = eval("sinkhorn(tensor([[30.0, -30.0], [-30.0, 30.0]]), 0.05, 3).sum().item()");
    assert!((got - 2.0).abs() < 1e-4, "{got}");
}

#[test]
fn dino_and_swav_losses_match_hand_values() {
    // Soft cross-entropy of equal logits over two classes against any target: ln 2.
    close(
        "soft_cross_entropy(tensor([[0.0, 0.0]]), tensor([[0.3, 0.7]])).item()",
        2f64.ln(),
    );
    // DINO: teacher logits [0, ln 3] with centre 0 and temperature 1 give targets [1/4, 3/4];
    // student logits 0 at temperature 1: ln 2 for both pairs.
    close(
        "let t = tensor([[0.0, 1.0986123]]); let s = tensor([[0.0, 0.0]]); \
         dino_loss(s, s, t, t, zeros([1, 2]), 1.0, 1.0).item()",
        2f64.ln(),
    );
    // The centre shifts the teacher: centre [0, ln 3] makes its targets uniform; a student
    // at [ln 3, 0] (temperature 1) then pays 0.5 (ln 4 - ln 3) + 0.5 ln 4 ... per pair.
    let want = 0.5 * ((4f64).ln() - 3f64.ln()) + 0.5 * (4f64).ln();
    close(
        "let c = tensor([[0.0, 1.0986123]]); let t = c; let s = tensor([[1.0986123, 0.0]]); \
         dino_loss(s, s, t, t, c, 1.0, 1.0).item()",
        want,
    );
    // SwAV: codes [1, 0] against scores [0, 0] at temperature 1: ln 2 each way.
    close(
        "let p = tensor([[0.0, 0.0]]); let q = tensor([[1.0, 0.0]]); \
         swav_loss(p, p, q, q, 1.0).item()",
        2f64.ln(),
    );
}

#[test]
fn weight_normalised_prototypes_give_cosines() {
    // Unit rows: a unit input's scores are cosines, within [-1, 1], the largest 1 for an
    // input equal to a row.
    close(
        "let p = prototypes(8, 5, false); let x = randn([3, 8]).normalize(1); \
         let s = p.forward(x); if s.abs().max().item() <= 1.0 + 1e-6 { 1.0 } else { 0.0 }",
        1.0,
    );
    close(
        "let p = prototypes(4, 3, false); let w = p.parameters()[\"weight\"]; \
         p.forward(w.slice([1..2, 0..4]).normalize(1)).slice([0..1, 1..2]).item()",
        1.0,
    );
    // A learned gain starts at 1 and scales the row: its gradient flows.
    close(
        "let p = prototypes(4, 3, true); p.parameters()[\"gain\"].sum().item()",
        3.0,
    );
}

#[test]
fn a_frozen_part_keeps_its_parameters_while_the_rest_trains() {
    // Two linear layers in sequence; the second frozen: one SGD step changes the first
    // only, and the first still gets its gradient through the frozen second.
    let script = "let a = linear(4, 3); let b = linear(3, 2); let net = sequential([a, b]); \
                  let opt = sgd([net], #{ momentum: 0.9 }); \
                  b.frozen = true; \
                  let a0 = a.parameters()[\"weight\"]; let b0 = b.parameters()[\"weight\"]; \
                  opt.step(net.forward(randn([5, 4])).pow(2).mean(), 0.5); \
                  let da = (a.parameters()[\"weight\"] - a0).abs().sum().item(); \
                  let db = (b.parameters()[\"weight\"] - b0).abs().sum().item(); \
                  let thawed = !net.frozen && b.frozen; \
                  b.frozen = false; \
                  opt.step(net.forward(randn([5, 4])).pow(2).mean(), 0.5); \
                  let db2 = (b.parameters()[\"weight\"] - b0).abs().sum().item();";
    close(
        &format!("{script} if da > 0.0 && thawed {{ 1.0 }} else {{ 0.0 }}"),
        1.0,
    );
    close(&format!("{script} db"), 0.0);
    close(
        &format!("{script} if db2 > 0.0 && !b.frozen {{ 1.0 }} else {{ 0.0 }}"),
        1.0,
    );
}

#[test]
fn gelu_values_and_refused_layer_options() {
    close(
        "let x = tensor([[-1.0, 2.0]]); x.gelu().slice([0..1, 0..1]).item()",
        -0.15865525,
    );
    let err = error_of("mlp([4, 8, 2], #{ activation: \"tanh\" })");
    assert!(err.contains("unknown activation \"tanh\""), "{err}");
    let err = error_of("linear(4, 2, #{ learned_gain: true })");
    assert!(err.contains("learned_gain needs weight_norm"), "{err}");
}

#[test]
fn default_epochs_follow_the_data_size_on_the_cpu() {
    // Set epochs are kept; unset (0): 4 on Fashion-MNIST (937 steps an epoch at batch 64),
    // about 2,000 steps on the embedded sample (62 steps an epoch).
    close("default_epochs(2, 62).to_float()", 2.0);
    close("default_epochs(0, 937).to_float()", 4.0);
    close("default_epochs(0, 62).to_float()", 33.0);
    close("default_epochs(0, 1000).to_float()", 4.0);
}

#[test]
fn linear_schedule_warms_up_then_holds() {
    close("linear_schedule(0, 10, 0.04, 0.07)", 0.04);
    close("linear_schedule(5, 10, 0.04, 0.07)", 0.055);
    close("linear_schedule(10, 10, 0.04, 0.07)", 0.07);
    close("linear_schedule(3, 0, 0.04, 0.07)", 0.07);
}
