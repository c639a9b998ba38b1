//! The GPU code path, run on the CPU: burn-cpu compiles the same cubecl kernels and fusion as
//! CUDA through LLVM (`cargo test --profile ci --features cubecl-cpu --test gpu_path`, as
//! `.ci/run` runs it; `--release` works too). What is checked here is what sslhost does
//! differently on a GPU: batch norm over contiguous rows, half activations, one input shape
//! per kNN batch and the vote on the device. cubecl's CPU runtime has no bf16, so the half
//! type here is f16.
#![cfg(feature = "cubecl-cpu")]

use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use sslhost::kernels::Precision;
use sslhost::train::knn::{KnnConfig, accuracy};

mod model_common;

fn gpu_path() -> Device {
    sslhost::device::cubecl_cpu().expect("built with cubecl-cpu")
}

#[test]
fn cubecl_cpu_is_a_gpu_path_device_with_the_cpu_presets() {
    let device = gpu_path();
    assert_eq!(
        sslhost::device::kind(&device),
        sslhost::device::DeviceKind::CubeclCpu
    );
    assert!(sslhost::device::gpu_path(&device));
    assert!(!sslhost::device::gpu_path(&sslhost::device::cpu()));
}

#[test]
fn rows_batch_norm_matches_burns_op_in_cubecl_kernels() {
    for channels_last in [false, true] {
        let f32 = burn::tensor::FloatDType::F32;
        let (dtype, dx_dtype, distances) =
            model_common::rows_against_burn(&gpu_path(), f32, channels_last);
        assert_eq!((dtype, dx_dtype), (DType::F32, DType::F32));
        for (name, rel) in distances {
            assert!(
                rel < 1e-4,
                "{name} (channels last {channels_last}): rows are {rel} off burn's op"
            );
        }
    }
}

#[test]
fn rows_batch_norm_keeps_an_f16_input_f16_in_cubecl_kernels() {
    for channels_last in [false, true] {
        let f16 = burn::tensor::FloatDType::F16;
        let (dtype, dx_dtype, distances) =
            model_common::rows_against_burn(&gpu_path(), f16, channels_last);
        assert_eq!((dtype, dx_dtype), (DType::F16, DType::F16));
        for (name, rel) in distances {
            assert!(
                rel < 2e-3,
                "{name}: rows on f16 are {rel} off burn's op in f32"
            );
        }
    }
}

#[test]
fn half_activations_track_f32_in_cubecl_kernels() {
    let device = gpu_path();
    let plain = model_common::PLAIN;
    let (dtype32, y32, grad32) = model_common::resnet_step(&device, Precision::F32, plain);
    // The same network on the flex backend, in f32: the two backends agree.
    let flex = sslhost::device::cpu();
    let (_, y_flex, _) = model_common::resnet_step(&flex, Precision::F32, plain);
    let rel = model_common::rel_distance(&y_flex, &y32);
    assert!(rel < 1e-4, "cubecl and flex are {rel} apart in f32");
    for norm in model_common::BATCH_NORMS {
        let variant = model_common::half(norm);
        let (dtype, y16, grad16) = model_common::resnet_step(&device, Precision::F16, variant);
        assert_eq!((dtype32, dtype), (DType::F32, DType::F32));
        for (full, half) in [(&y32, &y16), (&grad32, &grad16)] {
            let rel = model_common::rel_distance(full, half);
            // f16 keeps 11 bits of mantissa; activations and products are rounded to it.
            assert!(rel < 2e-2, "f16 activations ({norm:?}) are {rel} off f32");
            assert!(
                rel > 1e-6,
                "f16 activations matched f32 to {rel}: nothing ran in f16"
            );
        }
    }
}

#[test]
fn the_knn_vote_on_the_device_equals_the_host_vote() {
    let (n_train, n_test, dim, classes) = (300, 70, 8, 5);
    let mut rng = sslhost::tensor::HostRng::new(11);
    let train_x = rng.normal_vec(n_train * dim, 1.0);
    let test_x = rng.normal_vec(n_test * dim, 1.0);
    let label = |i: usize| ((i * 7) % classes) as i64;
    let train_y: Vec<i64> = (0..n_train).map(label).collect();
    let test_y: Vec<i64> = (0..n_test).map(label).collect();
    let config = KnnConfig {
        k: 20,
        temperature: 0.1,
        // A short last batch of test rows (70 = 32 + 32 + 6).
        batch_size: 32,
    };
    let score = |device: &Device| {
        let unit = |v: &[f32], n: usize| {
            sslhost::tensor::unit_rows(Tensor::<2>::from_data(
                TensorData::new(v.to_vec(), [n, dim]),
                device,
            ))
        };
        let labels =
            |v: &[i64]| Tensor::<1, Int>::from_data(TensorData::new(v.to_vec(), [v.len()]), device);
        let (tr, te) = (unit(&train_x, n_train), unit(&test_x, n_test));
        let (ltr, lte) = (labels(&train_y), labels(&test_y));
        accuracy((&tr, &ltr), (&te, &lte), classes, &config).unwrap()
    };
    let on_device = score(&gpu_path());
    let on_host = score(&sslhost::device::cpu());
    assert_eq!(on_device, on_host);
    assert!(
        on_host > 0.0 && on_host < 1.0,
        "a degenerate vote: {on_host}"
    );
}

#[test]
fn gpu_kernels_extension_matches_burn_through_fusion() {
    // The extension's lazy (fusion) wrappers, the cubecl backend's bodies and the autodiff
    // wiring, in cubecl's kernels: a block's 3x3 with its residual, a strided 3x3 and a 1x1
    // shortcut of ResNet-18, the output and every gradient against burn's ops.
    use sslhost::kernels::gpu_kernels::selftest;
    let layers = selftest::resnet18_cifar_layers(2);
    for layer in [layers[2], layers[3], layers[4]] {
        let distances = selftest::compare(&gpu_path(), burn::tensor::FloatDType::F32, layer);
        assert!(distances.len() >= 7, "{layer:?}: every gradient compared");
        for (name, rel) in distances {
            assert!(
                rel < 1e-4,
                "{layer:?}: {name} is {rel} off burn's in cubecl kernels"
            );
        }
    }
}

#[test]
fn the_handshake_kernels_signal_wait_and_give_up() {
    // The two one-thread kernels that order another stream with cubecl's, compiled and run in
    // cubecl's kernels: a signal stores its count, a wait whose partner is done returns without
    // a timeout, and a wait whose partner never comes gives up and records it.
    let device = burn_cubecl::CubeDevice::Cpu(Default::default());
    let [signalled, finished, stalled] =
        sslhost::kernels::gpu_kernels::handshake::exercise(&device).unwrap();
    assert_eq!(signalled, [5, 0, 0, 0]);
    assert_eq!(finished, [0, 7, 0, 0]);
    assert_eq!(stalled, [0, 0, 3, 0]);
}

#[test]
fn the_hold_launch_binds_buffers_only_where_cubecl_must_know_of_them() {
    // After a call of cuDNN's, a launch bound to its buffers: inside a graph's recording all
    // of them (in launches of at most PER_LAUNCH), outside one only those made on another
    // cubecl stream, and none in the usual case. The launch changes no buffer.
    use burn_cubecl::cubecl::CubeElement;
    use sslhost::kernels::gpu_kernels::hold::{PER_LAUNCH, after_foreign_call, hold};
    use sslhost::kernels::recording::Recording;
    let device = burn_cubecl::CubeDevice::Cpu(Default::default());
    let client = device.client();
    let values = |i: u32| [i, i + 1, i + 2];
    let mut buffers: Vec<_> = (0..PER_LAUNCH as u32 + 4)
        .map(|i| client.create_from_slice(u32::as_bytes(&values(i))))
        .collect();
    let read = |h: &burn_cubecl::cubecl::server::Handle| {
        let bytes = client.read_one(h.clone()).unwrap();
        bytes
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect::<Vec<_>>()
    };
    let launched = sslhost::kernels::gpu_kernels::hold_launches();
    assert_eq!(after_foreign_call(&client, &buffers), 0);
    {
        let _window = Recording::open();
        assert_eq!(after_foreign_call(&client, &buffers), 2);
        assert_eq!(after_foreign_call(&client, &buffers[..3]), 1);
        // burn's fusion runs the calls on a thread of its own, under the stream of the code
        // that queued them: the window is that stream's, not the opening thread's.
        let stream = cubecl_environment::stream::StreamId::current();
        let (elsewhere, as_queued) = std::thread::spawn(move || {
            let as_queued = stream.executes(sslhost::kernels::recording::recording);
            (sslhost::kernels::recording::recording(), as_queued)
        })
        .join()
        .unwrap();
        assert!(!elsewhere && as_queued);
    }
    assert_eq!(after_foreign_call(&client, &buffers), 0);
    // A buffer made on another thread is another cubecl stream's.
    let there = {
        let client = client.clone();
        std::thread::spawn(move || client.create_from_slice(u32::as_bytes(&[7u32, 8, 9])))
            .join()
            .unwrap()
    };
    buffers.push(there.clone());
    assert_eq!(after_foreign_call(&client, &buffers), 1);
    assert_eq!(hold(&client, &[]), 0);
    // The count a capture reports (no other test here binds buffers).
    assert_eq!(sslhost::kernels::gpu_kernels::hold_launches() - launched, 4);
    for (i, b) in buffers[..PER_LAUNCH + 4].iter().enumerate() {
        assert_eq!(read(b), values(i as u32));
    }
    assert_eq!(read(&there), [7, 8, 9]);
    // The kernel compiles and its launch reads back clean, so graphs may keep cuDNN's
    // buffers.
    sslhost::kernels::gpu_kernels::hold::warm(&client).unwrap();
    assert_eq!(sslhost::kernels::gpu_kernels::hold::unusable(), None);
}

#[test]
fn a_non_finite_loss_skips_its_update_on_the_device_and_is_reported() {
    // On a GPU code path `opt.step` does not read the loss: a NaN loss must leave every
    // parameter and the momentum as they were, and the next read of the skip count names
    // its step. Two finite steps around it must then equal two finite steps on the CPU.
    use sslhost::models::SharedNet;
    use sslhost::models::layers::LinearConfig;
    use sslhost::optim::{Optimizer, Rule, SgdConfig};
    use sslhost::tensor::{DynTensor, HostRng};
    let run = |device: &Device, with_nan: bool| {
        let net =
            SharedNet::linear(&LinearConfig::new(2, 1), &mut HostRng::new(3), device).unwrap();
        let rule = Rule::Sgd(SgdConfig {
            momentum: 0.9,
            weight_decay: 0.01,
            ..Default::default()
        });
        let mut opt = Optimizer::new(rule, vec![net.clone()]).unwrap();
        let x = DynTensor::from_vec(vec![1.0, 2.0], &[1, 2], device).unwrap();
        let loss = |scale: f32| {
            let s = DynTensor::from_vec(vec![scale], &[1], device).unwrap();
            let y = net.forward(&x).unwrap().sum().unwrap();
            y.binary(&s, sslhost::tensor::BinaryOp::Mul).unwrap()
        };
        let reads = sslhost::tensor::device_reads();
        opt.step(&loss(1.0), 0.1).unwrap();
        if sslhost::device::gpu_path(device) {
            let read = sslhost::tensor::device_reads() - reads;
            assert_eq!(read, 0, "opt.step waited for the device");
        }
        let mut skipped = None;
        if with_nan {
            let before = net.parameters();
            opt.step(&loss(f32::NAN), 0.1).unwrap();
            for ((name, a), (_, b)) in before.iter().zip(net.parameters()) {
                let (a, b) = (a.to_f64_vec().unwrap(), b.to_f64_vec().unwrap());
                assert_eq!(a, b, "{name} changed on a skipped update");
            }
            skipped = Some(opt.check_skips().unwrap_err().to_string());
            assert!(opt.check_skips().is_ok(), "a skip is reported once");
        }
        opt.step(&loss(1.0), 0.1).unwrap();
        let params: Vec<Vec<f64>> = net
            .parameters()
            .into_iter()
            .map(|(_, t)| t.to_f64_vec().unwrap())
            .collect();
        (params, skipped)
    };
    let (on_cpu, _) = run(&sslhost::device::cpu(), false);
    let (on_gpu_path, skipped) = run(&gpu_path(), true);
    let message = skipped.unwrap();
    assert!(message.contains("not finite at step 1"), "{message}");
    for (a, b) in on_cpu.iter().flatten().zip(on_gpu_path.iter().flatten()) {
        assert!(
            (a - b).abs() < 1e-5,
            "cpu {on_cpu:?} vs gpu path {on_gpu_path:?}"
        );
    }
}

#[test]
fn updates_over_parameter_vectors_match_the_cpu_in_cubecl_kernels() {
    // The parameters as views of their network's vector (aligned views over its buffer on
    // cubecl, not slices copied), LARS over the vector and the EMA over two vectors: three
    // steps of a small ResNet with a head and its momentum copy, in cubecl's kernels, must
    // land where burn-flex's land; and so must they when the updates are written into the
    // vectors they read (a recorded step's), where the target keeps a vector of its own.
    use sslhost::kernels::{KernelPolicy, install, installed, restore};
    use sslhost::models::layers::LinearConfig;
    use sslhost::models::{ResNetConfig, SharedNet};
    use sslhost::optim::{LarsConfig, Optimizer, Rule};
    use sslhost::tensor::{DynTensor, HostRng};
    let run = |device: &Device, capture: bool| {
        let before = installed();
        install(KernelPolicy::default().with_capture(capture));
        let mut rng = HostRng::new(3);
        let config = ResNetConfig {
            cifar_stem: true,
            widths: [4, 4, 8, 8],
            blocks: Some([1, 1, 1, 1]),
            ..ResNetConfig::new(18)
        };
        let backbone = SharedNet::resnet(&config, &mut rng, device).unwrap();
        let head = SharedNet::linear(&LinearConfig::new(8, 3), &mut rng, device).unwrap();
        let online = SharedNet::sequential(vec![backbone, head]).unwrap();
        let target = online.momentum_copy();
        let rule = Rule::Lars(LarsConfig {
            momentum: 0.9,
            weight_decay: 1e-4,
            eta: 0.02,
            exclude_bias_and_norm: true,
        });
        let mut opt = Optimizer::new(rule, vec![online.clone()]).unwrap();
        let x =
            DynTensor::from_vec(rng.normal_vec(4 * 3 * 8 * 8, 1.0), &[4, 3, 8, 8], device).unwrap();
        // A parameter as the first step leaves it: a view of the online vector, which the
        // first step gathered.
        let mut kept = None;
        for _ in 0..3 {
            let y = online.forward(&x).unwrap();
            let z = target.forward(&x).unwrap().detach();
            let d = y.binary(&z, sslhost::tensor::BinaryOp::Sub).unwrap();
            opt.step(&d.pow(2.0).unwrap().mean().unwrap(), 0.1).unwrap();
            SharedNet::update_momentum(&online, &target, 0.9).unwrap();
            if kept.is_none() {
                let (_, p) = online.parameters().swap_remove(0);
                kept = Some((p.to_f64_vec().unwrap(), p));
            }
        }
        let (initial, kept) = kept.unwrap();
        let read = |net: &SharedNet| -> Vec<f64> {
            net.parameters()
                .into_iter()
                .flat_map(|(_, t)| t.to_f64_vec().unwrap())
                .collect()
        };
        let now = online.parameters().swap_remove(0).1.to_f64_vec().unwrap();
        assert_ne!(now, initial, "the update landed");
        // In place on cubecl when recorded: the parameter kept from before the last two steps
        // reads the new values; otherwise (and always on burn-flex) it keeps the old ones.
        let in_place = capture && sslhost::device::gpu_path(device);
        let expected = if in_place { &now } else { &initial };
        assert_eq!(&kept.to_f64_vec().unwrap(), expected, "capture {capture}");
        restore(before);
        (read(&online), read(&target))
    };
    let (cpu_online, cpu_target) = run(&sslhost::device::cpu(), false);
    for capture in [false, true] {
        let (gpu_online, gpu_target) = run(&gpu_path(), capture);
        for (cpu, gpu, what) in [
            (&cpu_online, &gpu_online, "online"),
            (&cpu_target, &gpu_target, "target"),
        ] {
            let rel = model_common::rel_distance(
                &cpu.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                &gpu.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            );
            assert!(
                rel < 1e-4,
                "{what} (capture {capture}): cubecl is {rel} off burn-flex"
            );
        }
    }
}

#[test]
fn a_write_into_a_vector_reaches_the_views_taken_before_it_in_cubecl_kernels() {
    // What a replayed step relies on: the update lands in the vector's own buffer, which the
    // parameters are views of, through fusion's lazy tensors.
    use sslhost::kernels::views::{flat_view, write_into};
    let device = gpu_path();
    let old: Vec<f32> = (0..3000).map(|i| i as f32).collect();
    let v = Tensor::<1>::from_data(TensorData::new(old.clone(), [3000]), &device);
    let view: Tensor<2> = flat_view(&v, 1024, [2, 3]);
    let before: Tensor<1> = flat_view(&v, 2048, [2]);
    assert_eq!(values(before), [2048.0, 2049.0]);
    let kept = write_into(&v, v.clone() * 2.0);
    let doubled: Vec<f32> = old.iter().map(|x| x * 2.0).collect();
    assert_eq!(values(kept), doubled);
    assert_eq!(
        values(view),
        [2048.0, 2050.0, 2052.0, 2054.0, 2056.0, 2058.0]
    );
    assert_eq!(values(v), doubled);
}

#[test]
fn a_recorded_enqueue_writes_the_queue_into_its_own_buffer_in_cubecl_kernels() {
    // MoCo's queue under `capture`: the same keys as a plain enqueue, in the buffer a
    // handle taken before the enqueue reads.
    use sslhost::kernels::{install, installed, restore};
    use sslhost::models::queue::Queue;
    use sslhost::tensor::{DynTensor, HostRng};
    let device = gpu_path();
    let mut plain = Queue::new(8, 4, &mut HostRng::new(1), &device).unwrap();
    let mut recorded = plain.clone();
    let held = recorded.tensor();
    let old = held.to_f64_vec().unwrap();
    let k = DynTensor::from_vec((0..12).map(|i| i as f32).collect(), &[3, 4], &device).unwrap();
    plain.enqueue(&k).unwrap();
    let before = installed();
    install(sslhost::kernels::current().with_capture(true));
    recorded.enqueue(&k).unwrap();
    restore(before);
    let want = plain.tensor().to_f64_vec().unwrap();
    assert_eq!(&want[..12], &(0..12).map(f64::from).collect::<Vec<_>>()[..]);
    assert_eq!(&want[12..], &old[..20]);
    assert_eq!(recorded.tensor().to_f64_vec().unwrap(), want);
    assert_eq!(held.to_f64_vec().unwrap(), want);
}

#[test]
fn a_script_loop_computes_the_same_with_its_state_written_in_place_in_cubecl_kernels() {
    // A MoCo-like loop as a script, run as recipes run it and under `capture`, where the
    // parameters, optimiser state, EMA target, running statistics and queue are written into
    // the buffers they were read from: the same losses, queue and evaluation outputs (which
    // read the running statistics). Not to the bit: the writes change how fusion groups the
    // elementwise ops around them (a fused multiply-add rounds once), so the last bits move;
    // a stale or shared buffer would move the values by far more.
    use sslhost::kernels::KernelPolicy;
    use sslhost::session::Session;
    let script = r#"
        let backbone = resnet(18, #{ cifar_stem: true, widths: [4, 4, 8, 8], blocks: [1, 1, 1, 1] });
        let online = sequential([backbone, linear(8, 8)]);
        let target = momentum_copy(online);
        let keys = queue(16, 8);
        let opt = lars([online], #{ momentum: 0.9, weight_decay: 1e-4, eta: 0.02 });
        let out = [];
        for i in 0..4 {
            let x = randn([4, 3, 8, 8]);
            let q = online.forward(x).normalize(1);
            let k = target.forward(x).detach().normalize(1);
            let loss = info_nce(q, k, keys.tensor(), 0.2);
            opt.step(loss, 0.1);
            update_momentum(online, target, 0.9 + 0.01 * i.to_float());
            keys.enqueue(k);
            out.push(loss.item());
        }
        let x = randn([2, 3, 8, 8]);
        online.eval_mode();
        target.eval_mode();
        out + online.forward(x).to_array() + target.forward(x).to_array() + keys.tensor().to_array()
    "#;
    let run = |capture: bool| -> Vec<f64> {
        let session =
            Session::new(gpu_path(), 7).with_kernels(KernelPolicy::default().with_capture(capture));
        let out =
            sslhost::engine::run_source("loop.rhai", script, std::path::Path::new("."), session)
                .unwrap_or_else(|e| panic!("capture {capture}: {e}"));
        fn flat(v: &rhai::Dynamic, out: &mut Vec<f64>) {
            match v.clone().into_array() {
                Ok(items) => items.iter().for_each(|i| flat(i, out)),
                Err(_) => out.push(v.as_float().unwrap()),
            }
        }
        let mut values = Vec::new();
        flat(&out, &mut values);
        values
    };
    let (eager, recorded) = (run(false), run(true));
    assert_eq!(eager.len(), 4 + 2 * 8 + 2 * 8 + 16 * 8);
    assert!(eager.iter().all(|v| v.is_finite()), "{eager:?}");
    let rel = model_common::rel_distance(
        &eager.iter().map(|&v| v as f32).collect::<Vec<_>>(),
        &recorded.iter().map(|&v| v as f32).collect::<Vec<_>>(),
    );
    assert!(rel < 1e-5, "in place, the loop is {rel} off");
}

#[test]
fn the_capture_probe_runs_eagerly_where_the_runtime_has_no_graphs_in_cubecl_kernels() {
    // cubecl's CPU runtime refuses a capture: the step runs eagerly, with the updates written
    // into the vectors they read and the rates staged, and the losses continue those of the
    // step as recipes run it to the bit.
    use sslhost::train::capture::{BATCHES, ProbeConfig, WARMUP, probe};
    let config = ProbeConfig {
        batch: 8,
        side: 16,
        widths: [4, 4, 8, 8],
        checked: 2,
        timed: 1,
        lr: 0.05,
        seed: 3,
    };
    let report = probe(&config, &gpu_path()).unwrap();
    assert!(!report.captured);
    assert!(report.refused.is_some());
    assert_eq!(report.offset, WARMUP + 1);
    assert_eq!(report.replayed, report.eager[report.offset..]);
    // The batch-norm running statistics, written into their own buffers, too.
    assert_eq!(report.statistics_difference, 0.0);
    let losses = &report.eager;
    assert!(
        losses.windows(BATCHES + 1).all(|w| w[BATCHES] < w[0]),
        "{losses:?}"
    );
    // The same steps on burn-flex: the same losses but for the kernels' summation order.
    let on_cpu = probe(&config, &sslhost::device::cpu()).unwrap();
    for (a, b) in on_cpu.eager.iter().zip(losses) {
        assert!(
            (a - b).abs() <= 1e-3 * a.abs(),
            "{:?} vs {losses:?}",
            on_cpu.eager
        );
    }
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

#[test]
fn a_replayed_loop_computes_what_the_loop_computes_in_cubecl_kernels() {
    // `--capture replay` on the GPU code path: a MoCo-like loop over a loader, whose steps
    // after the first are answered from the recorded step and run their work together at
    // the step's end, through fusion's lazy tensors. The same losses up to the last bits:
    // the second view's augmentation now reaches fusion's queue before the first forward
    // rather than after it, which regroups the fused elementwise ops (a fused multiply-add
    // rounds once). A value left stale would be off by far more (the loss moves by 10% and
    // more a step here).
    use sslhost::tensor::tape;
    let script = r#"
        let ds = dataset("synthetic", #{ samples: 32, size: 8, classes: 4 });
        let loader = loader(ds, #{ batch_size: 8 });
        let view = transform([random_resized_crop(8), hflip(0.5)]);
        let online = sequential([resnet(18, #{ cifar_stem: true, widths: [4, 4, 8, 8], blocks: [1, 1, 1, 1] }),
                                 linear(8, 8)]);
        let target = momentum_copy(online);
        let keys = queue(16, 8);
        let opt = lars([online], #{ momentum: 0.9, weight_decay: 1e-4, eta: 0.02 });
        let out = [];
        for b in steps(loader, 1) {
            let q = online.forward(view.apply(b.images)).normalize(1);
            let k = target.forward(view.apply(b.images)).detach().normalize(1);
            let loss = info_nce(q, k, keys.tensor(), 0.2);
            opt.step(loss, 0.1);
            update_momentum(online, target, 0.9);
            keys.enqueue(k);
            out.push(loss.item());
        }
        out
    "#;
    // `graphs`: through a device graph once warmed up, with the updates in place; cubecl's
    // CPU runtime refuses the capture, and the closures go on standing in.
    let run = |mode: Option<tape::Mode>, graphs: bool| {
        run_taped(script, mode, graphs.then_some(tape::GraphMaker::Device))
    };
    let (eager, none) = run(None, false);
    assert!(none.is_none());
    assert_eq!(eager.len(), 4);
    for graphs in [false, true] {
        let (replayed, report) = run(Some(tape::Mode::Replay), graphs);
        assert_close(&replayed, &eager);
        let replay = report.unwrap().replay.unwrap();
        assert_eq!(
            (replay.recorded, replay.replayed, replay.departures),
            (1, 3, 0),
            "{replay:?}"
        );
        // Two launches warm up, the third tries the capture, which this runtime refuses.
        let graph = replay.graph.unwrap_or_default();
        assert_eq!(graphs, graph.starts_with("refused"), "{graph}");
        assert_eq!(replay.graph_replays, 0);
    }
}

#[test]
fn a_state_set_under_capture_writes_into_its_own_buffer_in_cubecl_kernels() {
    // A state tensor (UniGrad's F, DINO's centre) under `capture`: the new value lands in the
    // buffer a handle taken before the set reads, as a replayed graph needs; without it the
    // handle keeps the old value.
    use sslhost::kernels::{install, installed, restore};
    use sslhost::tensor::{DynTensor, StateTensor};
    let device = gpu_path();
    let value = |v: f32| DynTensor::from_vec(vec![v; 4], &[2, 2], &device).unwrap();
    for capture in [false, true] {
        let mut state = StateTensor::new(&value(1.0)).unwrap();
        let held = state.value();
        let before = installed();
        install(sslhost::kernels::current().with_capture(capture));
        let next = value(2.0)
            .binary_scalar(1.5, sslhost::tensor::BinaryOp::Mul, false)
            .unwrap();
        state.set(&next).unwrap();
        restore(before);
        assert_eq!(state.value().to_f64_vec().unwrap(), vec![3.0; 4]);
        assert_eq!(state.value().shape(), vec![2, 2]);
        let kept = if capture { 3.0 } else { 1.0 };
        assert_eq!(
            held.to_f64_vec().unwrap(),
            vec![kept; 4],
            "capture {capture}"
        );
    }
}

#[test]
fn an_int_write_into_reaches_the_handles_of_its_buffer_in_cubecl_kernels() {
    // Labels a replayed step reads where the recording read them: integers written in place
    // as 32-bit words, as floats are.
    use sslhost::kernels::views::write_into_int;
    let device = gpu_path();
    let dst = Tensor::<1, Int>::from_data(TensorData::new(vec![1i64, 2, 3, 4], [4]), &device);
    let held = dst.clone();
    let src = Tensor::<1, Int>::from_data(TensorData::new(vec![9i64, 8, 7, 6], [4]), &device);
    let written = write_into_int(&dst, src);
    let values = |t: Tensor<1, Int>| t.into_data().convert::<i64>().try_to_vec::<i64>().unwrap();
    assert_eq!(values(written), vec![9, 8, 7, 6]);
    assert_eq!(
        values(held),
        vec![9, 8, 7, 6],
        "the handle taken before reads the new values"
    );
}

#[test]
fn cross_entropy_takes_its_labels_on_the_device_in_cubecl_kernels() {
    use sslhost::tensor::DynTensor;
    let (rows, classes) = (6, 5);
    let logits = sslhost::tensor::HostRng::new(3).normal_vec(rows * classes, 1.0);
    let labels: Vec<i64> = vec![4, 0, 2, 2, 1, 3];
    // The losses and the logits' gradient, with labels the host knows (int and float) and
    // with int labels only the device holds.
    let run = |device: &Device| {
        let x = DynTensor::from_vec(logits.clone(), &[rows, classes], device)
            .unwrap()
            .require_grad()
            .unwrap();
        let host_int = DynTensor::from_int_vec(labels.clone(), &[rows], device).unwrap();
        let host_float =
            DynTensor::from_vec(labels.iter().map(|&l| l as f32).collect(), &[rows], device)
                .unwrap();
        let device_int = DynTensor::from_int(Tensor::<1, Int>::from_data(
            TensorData::new(labels.clone(), [rows]),
            device,
        ));
        assert!(device_int.host_values().is_none());
        [host_int, host_float, device_int].map(|y| {
            let loss = x.cross_entropy_per_row(&y).unwrap();
            let grads = loss.sum().unwrap().float4("loss").unwrap().backward();
            let g = x.float4("x").unwrap().grad(&grads).unwrap();
            let g: Vec<f32> = g.into_data().convert::<f32>().try_to_vec().unwrap();
            (loss.to_f64_vec().unwrap(), g)
        })
    };
    let (on_device, on_host) = (run(&gpu_path()), run(&sslhost::device::cpu()));
    for ((loss, grad), (host_loss, host_grad)) in on_device.iter().zip(&on_host) {
        for (a, b) in loss.iter().zip(host_loss) {
            assert!(
                (a - b).abs() < 1e-5,
                "losses {loss:?} against {host_loss:?}"
            );
        }
        for (a, b) in grad.iter().zip(host_grad) {
            assert!(
                (a - b).abs() < 1e-5,
                "gradients {grad:?} against {host_grad:?}"
            );
        }
    }
    // The three kinds of labels give one answer.
    assert_eq!(on_device[0], on_device[1]);
    assert_eq!(on_device[0], on_device[2]);
    // And it is the cross-entropy: −log softmax at the label.
    let row0 = &logits[..classes];
    let lse = row0.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln();
    assert!((on_host[0].0[0] - (lse - row0[4] as f64)).abs() < 1e-5);
}

#[test]
fn a_failed_capture_resumes_from_the_checkpoint_written_before_it_in_cubecl_kernels() {
    // The GPU code path's optimiser checks the loss on the device, so its step has no read
    // inside a call and a replay tries to capture it: with `SSLHOST_FAULT=capture` that
    // capture fails once begun, as a refused one does on a GPU. Step 2 departs, so the
    // capture falls at step 6. The run ends with the checkpoint written before step 6 kept,
    // and resumes from it, momentum and EMA included, to the losses of a run never stopped.
    let recipe = r#"
let ds = dataset("synthetic", #{ samples: 64, classes: 4, size: 4, channels: 1 });
let l = loader(ds, #{ batch_size: 8 });
let net = mlp([16, 8, 4]);
let target = momentum_copy(net);
let opt = sgd([net], #{ momentum: 0.9 });
let state = #{ net: net, target: target, opt: opt };
resume(state);
for b in steps(l, 1) {
    let x = b.images.reshape([8, 16]);
    let loss = cross_entropy(net.forward(x), b.labels) + (net.forward(x) - target.forward(x)).pow(2).mean();
    if b.step == 2 { loss = loss * 1.0; }
    opt.step(loss, 0.1);
    update_momentum(net, target, 0.5);
    if b.step % 4 == 3 { log(b.step, #{ loss: loss }); }
}
"#;
    let dir = std::env::temp_dir().join(format!("sslhost-gpu-capture-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("recipe.rhai");
    std::fs::write(&path, recipe).unwrap();
    let sslhost = |runs: &str| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_sslhost"));
        c.args([
            "run",
            path.to_str().unwrap(),
            "--device",
            "cubecl-cpu",
            "--seed",
            "3",
        ])
        .args(["--capture", "replay", "--runs"])
        .arg(dir.join(runs))
        .env("NO_COLOR", "1");
        c
    };
    let losses = |runs: &str| -> Vec<String> {
        let run = std::fs::read_dir(dir.join(runs))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                format!("{} {}", v["step"], v["loss"])
            })
            .collect()
    };
    let out = sslhost("whole").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = sslhost("split")
        .env("SSLHOST_CAPTURE_GRAPH", "1")
        .env("SSLHOST_FAULT", "capture")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("recording step 6 as a device graph failed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("the last checkpoint is kept (resumes at step 6)"),
        "{stderr}"
    );
    let run = std::fs::read_dir(dir.join("split"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let out = sslhost("split").arg("--resume").arg(&run).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("at step 6"), "{stderr}");
    assert_eq!(losses("split"), losses("whole"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_stand_in_graph_replays_the_captured_buffers_as_the_loop_computes_in_cubecl_kernels() {
    // `SSLHOST_CAPTURE_GRAPH=stand-in`: a graph's replays as bookkeeping, on buffers written
    // in place. Each later step copies its inputs from outside the step (views, labels, the
    // schedule's number) into the buffers the capture read, re-runs the captured work
    // reading them there, and writes each call's value into its captured output, which is
    // what the step then reads. An input left stale, or an output read from the wrong buffer,
    // moves the losses by far more than fusion's rounding. Inputs a call of the step made
    // are each replay's new values (its backward follows its own autodiff graph).
    use sslhost::tensor::tape;
    let script = r#"
        let ds = dataset("synthetic", #{ samples: 64, size: 4, classes: 4, channels: 1 });
        let loader = loader(ds, #{ batch_size: 8 });
        let view = transform([random_resized_crop(4), hflip(0.5)]);
        let online = mlp([16, 12, 8]);
        let target = momentum_copy(online);
        let keys = queue(16, 8);
        let stats = state_tensor(zeros([8]));
        let opt = lars([online], #{ momentum: 0.9, weight_decay: 1e-4, eta: 0.02 });
        let out = [];
        for b in steps(loader, 1) {
            let w = 1.0 / (1.0 + b.step);       // a schedule: taken as an input from step 2 on
            let x = view.apply(b.images).reshape([8, 16]);
            let q = online.forward(x).normalize(1);
            let k = target.forward(x).detach().normalize(1);
            stats.set(0.5 * stats.value + 0.5 * k.mean(0));
            let loss = info_nce(q, k, keys.tensor(), 0.2) * (2.0 - w)
                     + (q.mean(0) - stats.value).pow(2).sum();
            opt.step(loss, 0.1);
            update_momentum(online, target, 0.9);
            keys.enqueue(k);
            out.push(loss.item());
        }
        out
    "#;
    let (eager, _) = run_taped(script, None, None);
    assert_eq!(eager.len(), 8);
    let stand_in = Some(tape::GraphMaker::StandIn);
    let (replayed, report) = run_taped(script, Some(tape::Mode::Replay), stand_in);
    assert_close(&replayed, &eager);
    let replay = report.unwrap().replay.unwrap();
    // Step 1 departs where the number changed; 2 is recorded with it as an input, 3 and 4
    // warm up, 5 is captured, and 6 and 7 replay the graph.
    assert_eq!(
        (replay.recorded, replay.departures, replay.graph_replays),
        (2, 1, 2),
        "{replay:?}"
    );
    assert_eq!(
        replay.graph.as_deref(),
        Some("captured at step 5 (the stand-in)"),
        "{replay:?}"
    );
}

/// Runs `script` (which returns its losses) on the GPU code path under the tape `mode`, its
/// replay through graphs from `graphs` (with the updates in place): the losses, and the
/// tape's report.
fn run_taped(
    script: &str,
    mode: Option<sslhost::tensor::tape::Mode>,
    graphs: Option<sslhost::tensor::tape::GraphMaker>,
) -> (Vec<f64>, Option<sslhost::tensor::tape::Report>) {
    use sslhost::tensor::tape;
    if let Some(mode) = mode {
        tape::install(mode);
    }
    if let Some(maker) = graphs {
        tape::use_graphs(&gpu_path(), maker);
    }
    let kernels = sslhost::kernels::KernelPolicy::default().with_capture(graphs.is_some());
    let session = sslhost::session::Session::new(gpu_path(), 7).with_kernels(kernels);
    let out = sslhost::engine::run_source("loop.rhai", script, std::path::Path::new("."), session)
        .unwrap_or_else(|e| panic!("{mode:?} {graphs:?}: {e}"));
    let losses = out
        .into_array()
        .unwrap()
        .iter()
        .map(|v| v.as_float().unwrap())
        .collect();
    (losses, tape::finish().map(|r| r.unwrap()))
}

/// The replayed losses equal the eager ones up to fusion's regrouping of elementwise ops (a
/// fused multiply-add rounds once); a stale value moves a loss by far more.
fn assert_close(replayed: &[f64], eager: &[f64]) {
    assert_eq!(replayed.len(), eager.len());
    for (r, e) in replayed.iter().zip(eager) {
        assert!(
            (r - e).abs() <= 1e-5 * e.abs(),
            "{replayed:?} against {eager:?}"
        );
    }
}
