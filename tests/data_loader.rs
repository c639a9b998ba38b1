//! The loader: the order of an epoch is a pure function of (seed, epoch), every sample comes
//! exactly once per epoch, an epoch can start at any batch, and dropping an epoch midway
//! stops its threads.

use std::time::{Duration, Instant};

use sslhost::data::{Dataset, HostBatch, Loader, LoaderConfig, epoch_order};

/// `n` images of two pixels that spell their own index, labels `i % 7`.
fn indexed(n: usize) -> Dataset {
    let pixels = (0..n)
        .flat_map(|i| [(i % 256) as u8, (i / 256) as u8])
        .collect();
    let labels = (0..n).map(|i| (i % 7) as i64).collect();
    let classes = (0..7).map(|i| i.to_string()).collect();
    Dataset::from_memory("indexed", "test", pixels, [1, 1, 2], labels, classes).unwrap()
}

/// The sample indices of a host batch, read back from its pixels.
fn ids(b: &HostBatch) -> Vec<usize> {
    b.images
        .chunks(2)
        .map(|p| (p[0] * 255.0).round() as usize + 256 * (p[1] * 255.0).round() as usize)
        .collect()
}

fn config(batch_size: usize, drop_last: bool, seed: u64) -> LoaderConfig {
    LoaderConfig {
        drop_last,
        seed,
        ..LoaderConfig::new(batch_size)
    }
}

fn epoch_ids(loader: &Loader, epoch: u64, start: usize) -> Vec<Vec<usize>> {
    loader
        .epoch(epoch, start)
        .unwrap()
        .map(|b| ids(&b.unwrap()))
        .collect()
}

#[test]
fn the_order_is_a_pure_function_of_seed_and_epoch() {
    let a = epoch_order(1000, true, 7, 3);
    assert_eq!(a, epoch_order(1000, true, 7, 3));
    assert_ne!(a, epoch_order(1000, true, 7, 4), "another epoch");
    assert_ne!(a, epoch_order(1000, true, 8, 3), "another seed");
    let mut sorted = a.clone();
    sorted.sort();
    assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
    assert_eq!(epoch_order(5, false, 7, 3), vec![0, 1, 2, 3, 4]);
    // Pinned: a resumed run on a newer sslhost must see the same batches.
    assert_eq!(
        epoch_order(10, true, 0, 0),
        vec![6, 1, 8, 3, 2, 9, 0, 5, 4, 7]
    );
}

#[test]
fn batches_follow_the_epoch_order_and_repeat_for_the_same_seed_and_epoch() {
    let ds = indexed(103);
    let loader = Loader::new(ds.clone(), config(10, true, 42)).unwrap();
    let first = epoch_ids(&loader, 2, 0);
    let again = epoch_ids(&Loader::new(ds, config(10, true, 42)).unwrap(), 2, 0);
    assert_eq!(first, again);
    assert_ne!(first, epoch_ids(&loader, 3, 0));
    let order = loader.order(2);
    for (b, batch) in first.iter().enumerate() {
        assert_eq!(batch, &order[b * 10..b * 10 + 10]);
        assert_eq!(batch, &loader.batch_indices(2, b).unwrap());
    }
}

#[test]
fn every_sample_comes_once_per_epoch_without_drop_last() {
    let loader = Loader::new(indexed(103), config(10, false, 1)).unwrap();
    assert_eq!(loader.len(), 11);
    for epoch in 0..3 {
        let batches = epoch_ids(&loader, epoch, 0);
        assert_eq!(batches.len(), 11);
        assert_eq!(batches[10].len(), 3);
        let mut all: Vec<usize> = batches.concat();
        all.sort();
        assert_eq!(all, (0..103).collect::<Vec<_>>(), "epoch {epoch}");
    }
}

#[test]
fn drop_last_drops_only_the_tail_of_the_order() {
    let loader = Loader::new(indexed(103), config(10, true, 1)).unwrap();
    assert_eq!(loader.len(), 10);
    let batches = epoch_ids(&loader, 5, 0);
    assert_eq!(batches.len(), 10);
    assert!(batches.iter().all(|b| b.len() == 10));
    let mut all: Vec<usize> = batches.concat();
    assert_eq!(all, loader.order(5)[..100]);
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 100, "no sample twice");
}

#[test]
fn labels_and_shapes_come_with_the_samples() {
    let loader = Loader::new(indexed(50), config(8, true, 3)).unwrap();
    for b in loader.epoch(0, 0).unwrap() {
        let b = b.unwrap();
        assert_eq!(b.shape, [8, 1, 1, 2]);
        assert_eq!(b.epoch, 0);
        let want: Vec<i64> = ids(&b).iter().map(|i| (i % 7) as i64).collect();
        assert_eq!(b.labels, want);
    }
}

#[test]
fn starting_at_a_batch_gives_the_tail_of_the_same_epoch() {
    let loader = Loader::new(indexed(103), config(10, false, 9)).unwrap();
    let whole = epoch_ids(&loader, 4, 0);
    for start in [1, 7, 10] {
        let tail = epoch_ids(&loader, 4, start);
        assert_eq!(tail, whole[start..], "start {start}");
        let indices: Vec<usize> = loader
            .epoch(4, start)
            .unwrap()
            .map(|b| b.unwrap().index)
            .collect();
        assert_eq!(indices, (start..11).collect::<Vec<_>>());
    }
    assert_eq!(loader.epoch(4, 11).unwrap().count(), 0, "at the end: empty");
    assert!(loader.epoch(4, 12).is_err());
}

#[test]
fn several_workers_give_the_same_batches_in_order() {
    let ds = indexed(257);
    let one = Loader::new(ds.clone(), config(16, false, 5)).unwrap();
    for workers in [2, 3, 8] {
        let many = Loader::new(
            ds.clone(),
            LoaderConfig {
                workers,
                prefetch: 5,
                ..config(16, false, 5)
            },
        )
        .unwrap();
        let epoch = many.epoch(1, 2).unwrap();
        assert_eq!(epoch.threads(), workers);
        let got: Vec<Vec<usize>> = epoch.map(|b| ids(&b.unwrap())).collect();
        assert_eq!(got, epoch_ids(&one, 1, 2), "{workers} workers");
    }
}

#[test]
fn dropping_an_epoch_midway_stops_its_threads_without_hanging() {
    let ds = indexed(5000);
    let loader = Loader::new(
        ds,
        LoaderConfig {
            workers: 3,
            prefetch: 2,
            ..config(4, true, 0)
        },
    )
    .unwrap();
    let t = Instant::now();
    for round in 0..50 {
        let mut epoch = loader.epoch(round, 0).unwrap();
        if round % 2 == 0 {
            epoch.next().unwrap().unwrap();
        }
        // Drop joins the threads; a hang would never get here.
        drop(epoch);
    }
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
}

#[test]
fn a_batch_that_cannot_be_read_ends_the_epoch_with_an_error() {
    let tmp = std::env::temp_dir().join(format!("sslhost-loader-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.join("a")).unwrap();
    let good = image::RgbImage::from_pixel(4, 4, image::Rgb([9, 9, 9]));
    for i in 0..6 {
        good.save(tmp.join(format!("a/{i}.png"))).unwrap();
    }
    // Sorted after 3.png: sample 4, in batch 2 of 4.
    std::fs::write(tmp.join("a/3b.png"), b"not a png").unwrap();
    let ds = sslhost::data::folder::read_dir("bad", &tmp, 4).unwrap();
    let loader = Loader::new(
        ds,
        LoaderConfig {
            shuffle: false,
            ..config(2, false, 0)
        },
    )
    .unwrap();
    let results: Vec<_> = loader.epoch(0, 0).unwrap().collect();
    let errors: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("3b.png"), "{}", errors[0]);
    assert_eq!(results.len(), 3, "the error ends the epoch");
    assert!(results[2].is_err());
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn batches_upload_to_the_device() {
    let loader = Loader::new(indexed(20), config(6, false, 0)).unwrap();
    let device = sslhost::device::cpu();
    let batches: Vec<_> = loader
        .epoch_on(1, 0, &device)
        .unwrap()
        .map(|b| b.unwrap())
        .collect();
    assert_eq!(batches.len(), 4);
    assert_eq!(batches[0].images.shape(), vec![6, 1, 1, 2]);
    assert_eq!(batches[3].images.shape(), vec![2, 1, 1, 2]);
    assert!(batches[0].labels.is_int());
    assert_eq!(batches[0].labels.shape(), vec![6]);
    assert_eq!(batches[2].index, 2);
    assert_eq!(batches[2].step, 4 + 2, "epoch 1 of 4 batches, index 2");
}

#[test]
fn impossible_loaders_are_errors() {
    let ds = indexed(10);
    assert!(Loader::new(ds.clone(), LoaderConfig::new(0)).is_err());
    let e = Loader::new(ds.clone(), LoaderConfig::new(11))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no batch"), "{e}");
    let l = Loader::new(ds, config(11, false, 0)).unwrap();
    assert_eq!(l.len(), 1);
    assert!(l.batch_indices(0, 1).is_err());
}

#[test]
fn steps_span_epochs_and_resume_at_any_step() {
    let loader = Loader::new(indexed(30), config(7, true, 2)).unwrap();
    assert_eq!(loader.len(), 4);
    let device = sslhost::device::cpu();
    let key = |b: &sslhost::data::Batch| (b.epoch, b.index, b.step, b.labels.to_f64_vec().unwrap());
    let all: Vec<_> = loader
        .steps_on(3, 0, &device)
        .unwrap()
        .map(|b| key(&b.unwrap()))
        .collect();
    assert_eq!(all.len(), 12);
    for (i, (epoch, index, step, _)) in all.iter().enumerate() {
        assert_eq!((*epoch, *index, *step), (i as u64 / 4, i % 4, i as u64));
    }
    for start in [1, 4, 6, 11, 12] {
        let tail: Vec<_> = loader
            .steps_on(3, start, &device)
            .unwrap()
            .map(|b| key(&b.unwrap()))
            .collect();
        assert_eq!(tail, all[start as usize..], "from step {start}");
    }
    assert!(loader.steps_on(3, 13, &device).is_err());
}

#[test]
fn max_steps_cuts_the_stream_and_sets_its_end() {
    let loader = Loader::new(indexed(30), config(7, true, 2)).unwrap();
    let device = sslhost::device::cpu();
    let steps = |start: u64, max: u64| {
        let s = loader.steps_on(3, start, &device).unwrap().max_steps(max);
        let end = s.end();
        let got: Vec<u64> = s.map(|b| b.unwrap().step).collect();
        (end, got)
    };
    // 3 epochs of 4 batches; 0 is no limit, a limit past the end changes nothing.
    assert_eq!(steps(0, 0), (12, (0..12).collect()));
    assert_eq!(steps(0, 100), (12, (0..12).collect()));
    assert_eq!(steps(0, 5), (5, (0..5).collect()));
    // Resumed inside the limit, and past it (an empty stream, not an error).
    assert_eq!(steps(3, 5), (5, vec![3, 4]));
    assert_eq!(steps(6, 5), (5, vec![]));
    let s = loader.steps_on(3, 2, &device).unwrap();
    assert_eq!((s.start(), s.steps_per_epoch(), s.epochs()), (2, 4, 3));
}
