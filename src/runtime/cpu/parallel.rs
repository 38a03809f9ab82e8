//! Element-wise loops over slices that go multi-threaded only when the work pays for the
//! threads (small tensors stay on the calling thread: spawning costs more than it saves).

use rayon::prelude::*;

/// Below this many elements a loop runs on one thread.
pub const PARALLEL_MIN: usize = 1 << 15;
const CHUNK: usize = 1 << 13;

pub fn map(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    if x.len() < PARALLEL_MIN {
        out.iter_mut().zip(x).for_each(|(o, &a)| *o = f(a));
    } else {
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(o, x)| o.iter_mut().zip(x).for_each(|(o, &a)| *o = f(a)));
    }
    out
}

pub fn zip_map(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "zip_map: lengths differ");
    let mut out = vec![0.0; a.len()];
    if a.len() < PARALLEL_MIN {
        for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
            *o = f(x, y);
        }
    } else {
        out.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(|(o, (a, b))| {
                for ((o, &x), &y) in o.iter_mut().zip(a).zip(b) {
                    *o = f(x, y);
                }
            });
    }
    out
}

pub fn zip3_map(
    a: &[f32],
    b: &[f32],
    c: &[f32],
    f: impl Fn(f32, f32, f32) -> f32 + Sync,
) -> Vec<f32> {
    assert!(
        a.len() == b.len() && a.len() == c.len(),
        "zip3_map: lengths differ"
    );
    let mut out = vec![0.0; a.len()];
    let run = |o: &mut [f32], a: &[f32], b: &[f32], c: &[f32]| {
        for i in 0..o.len() {
            o[i] = f(a[i], b[i], c[i]);
        }
    };
    if a.len() < PARALLEL_MIN {
        run(&mut out, a, b, c);
    } else {
        out.par_chunks_mut(CHUNK).enumerate().for_each(|(i, o)| {
            let r = i * CHUNK..i * CHUNK + o.len();
            run(o, &a[r.clone()], &b[r.clone()], &c[r]);
        });
    }
    out
}

/// Run `f(row_index, row)` over the rows of `out` (rows of length `row_len`), in parallel when
/// the whole buffer is large.
pub fn for_each_row(out: &mut [f32], row_len: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if row_len == 0 {
        return;
    }
    if out.len() < PARALLEL_MIN {
        out.chunks_mut(row_len)
            .enumerate()
            .for_each(|(i, r)| f(i, r));
    } else {
        let rows_per_task = (CHUNK / row_len).max(1);
        out.par_chunks_mut(row_len * rows_per_task)
            .enumerate()
            .for_each(|(t, block)| {
                for (j, r) in block.chunks_mut(row_len).enumerate() {
                    f(t * rows_per_task + j, r);
                }
            });
    }
}
