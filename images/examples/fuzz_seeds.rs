//! Writes fuzz seeds made from CRIU image directories: `fuzz_seeds OUT_DIR IMAGE_DIR...`
//! creates `OUT_DIR/<target>/<fnv64 of content>` for every seed of
//! `stasis_images::fuzzing::seeds_from_dir` (used by `fuzz/seed.sh`).

fn fnv64(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((out, dirs)) = args.split_first() else {
        return Err("usage: fuzz_seeds OUT_DIR IMAGE_DIR...".into());
    };
    let mut n = 0;
    for d in dirs {
        for (target, bytes) in stasis_images::fuzzing::seeds_from_dir(std::path::Path::new(d)) {
            let dir = std::path::Path::new(out).join(target);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join(format!("{:016x}", fnv64(&bytes))), &bytes)?;
            n += 1;
        }
    }
    println!("{n} seeds written to {out}");
    Ok(())
}
