//! `cpuinfo.img` and `--cpu-cap`: the CPU a dump was made on, and the check a restore makes
//! before anything starts, as CRIU does.
//!
//! ```text
//!  dump --cpu-cap[=CAPS]      sys::cpu::CpuId::host() ──entry()──▶ cpuinfo.img
//!  restore --cpu-cap[=CAPS]   cpuinfo.img ──from_entry()──▶ CpuId ─┐
//!                             sys::cpu::CpuId::host() ─────────────┴─check(CAPS)─▶ ok / error
//! ```
//!
//! CAPS (CRIU's syntax, from the default `fpu,ins`): `fpu` — the xsave state the image may
//! hold fits this host (FPU/FXSR/OSXSAVE/XSAVES, xsave components, xsave sizes); `ins` — every
//! instruction extension of the dump host (SSE*, AVX*, BMI, AES, ...) is here too; `cpu` — all
//! capability words equal; `all`; `none` (no image, no check); `^` inverts what follows, `,`
//! separates. `--cpu-cap` alone means `all`. Without the option nothing is written or checked.
//! A failed check names the missing features, so a restore fails up front instead of the task
//! dying of SIGILL later.

use std::path::Path;

use stasis_images::framing::{read_single, Image};
use stasis_images::magic::ImageKind;
use stasis_images::pb;

use crate::sys::cpu::{CpuId, NCAPINTS};

/// Check the xsave state (CRIU's `CPU_CAP_FPU`).
pub const CAP_FPU: u32 = 1;
/// All capability words equal (`CPU_CAP_CPU`).
pub const CAP_CPU: u32 = 2;
/// Instruction extensions (`CPU_CAP_INS`).
pub const CAP_INS: u32 = 4;
/// Write `cpuinfo.img` at dump, read and check it at restore (`CPU_CAP_IMAGE`).
pub const CAP_IMAGE: u32 = 8;
/// `fpu,cpu,ins`.
pub const CAP_ALL: u32 = CAP_FPU | CAP_CPU | CAP_INS;
/// What CRIU starts from before it parses `--cpu-cap`.
pub const CAP_DEFAULT: u32 = CAP_FPU | CAP_INS;

/// Capability words of CRIU's version 1 and 2 images.
const NCAPINTS_V1: usize = 12;
const CAPABILITY_VER: u32 = 2;

/// Errors of the cpuinfo image and check.
#[derive(Debug, thiserror::Error)]
pub enum CpuinfoError {
    #[error("--cpu-cap={0}: bad value (expected fpu, cpu, ins, all, none, ^ and ,)")]
    Syntax(String),
    #[error("cpuinfo image {path}: {why}")]
    Image { path: String, why: String },
    #[error(
        "this host ({host}) lacks CPU features the images need (dumped on {image}): {missing}"
    )]
    Missing {
        host: String,
        image: String,
        missing: String,
    },
}

/// Parses a `--cpu-cap` value (`None`: the option without a value) into `CAP_*` bits.
pub fn parse_cpu_cap(arg: Option<&str>) -> Result<u32, CpuinfoError> {
    let Some(mut s) = arg else {
        return Ok(CAP_DEFAULT | CAP_ALL | CAP_IMAGE);
    };
    let orig = s;
    let mut caps = CAP_DEFAULT;
    let mut inverse = false;
    let set = |caps: &mut u32, bits: u32, inverse: bool| {
        if inverse {
            *caps &= !bits
        } else {
            *caps |= bits
        }
    };
    while !s.is_empty() {
        if let Some(r) = s.strip_prefix('^') {
            (inverse, s) = (!inverse, r);
        } else if let Some(r) = s.strip_prefix(',') {
            (inverse, s) = (false, r);
        } else if let Some(r) = s.strip_prefix("none") {
            caps = if inverse { CAP_ALL } else { 0 };
            s = r;
        } else {
            let (bits, r) = [
                ("fpu", CAP_FPU),
                ("all", CAP_ALL),
                ("cpu", CAP_CPU),
                ("ins", CAP_INS),
            ]
            .iter()
            .find_map(|(name, bits)| s.strip_prefix(name).map(|r| (*bits, r)))
            .ok_or_else(|| CpuinfoError::Syntax(orig.to_string()))?;
            set(&mut caps, bits, inverse);
            s = r;
        }
    }
    if caps != 0 {
        caps |= CAP_IMAGE;
    }
    Ok(caps)
}

/// The `CAP_*` bits of a command line's `--cpu-cap` (`None`: not given, nothing to do;
/// `Some(None)`: given without a value).
pub fn option_caps(opt: &Option<Option<String>>) -> Result<u32, CpuinfoError> {
    match opt {
        None => Ok(0),
        Some(v) => parse_cpu_cap(v.as_deref()),
    }
}

/// The instruction extensions CRIU's `ins` check compares: (capability word, bit, name as
/// in /proc/cpuinfo's flags).
pub const INS_FEATURES: &[(usize, u32, &str)] = &[
    (0, 0, "fpu"),
    (0, 4, "tsc"),
    (0, 8, "cx8"),
    (0, 11, "sep"),
    (0, 15, "cmov"),
    (0, 19, "clflush"),
    (0, 23, "mmx"),
    (0, 24, "fxsr"),
    (0, 25, "sse"),
    (0, 26, "sse2"),
    (1, 11, "syscall"),
    (1, 22, "mmxext"),
    (1, 27, "rdtscp"),
    (1, 30, "3dnowext"),
    (1, 31, "3dnow"),
    (3, 16, "rep_good"),
    (3, 20, "nopl"),
    (4, 0, "pni"),
    (4, 1, "pclmulqdq"),
    (4, 3, "monitor"),
    (4, 9, "ssse3"),
    (4, 13, "cx16"),
    (4, 19, "sse4_1"),
    (4, 20, "sse4_2"),
    (4, 22, "movbe"),
    (4, 23, "popcnt"),
    (4, 25, "aes"),
    (4, 26, "xsave"),
    (4, 27, "osxsave"),
    (4, 28, "avx"),
    (4, 29, "f16c"),
    (4, 30, "rdrand"),
    (6, 5, "abm"),
    (6, 6, "sse4a"),
    (6, 7, "misalignsse"),
    (6, 8, "3dnowprefetch"),
    (6, 11, "xop"),
    (6, 16, "fma4"),
    (6, 21, "tbm"),
    (9, 0, "fsgsbase"),
    (9, 3, "bmi1"),
    (9, 4, "hle"),
    (9, 5, "avx2"),
    (9, 8, "bmi2"),
    (9, 9, "erms"),
    (9, 11, "rtm"),
    (9, 14, "mpx"),
    (9, 16, "avx512f"),
    (9, 17, "avx512dq"),
    (9, 18, "rdseed"),
    (9, 19, "adx"),
    (9, 23, "clflushopt"),
    (9, 26, "avx512pf"),
    (9, 27, "avx512er"),
    (9, 28, "avx512cd"),
    (9, 29, "sha_ni"),
    (9, 30, "avx512bw"),
    (9, 31, "avx512vl"),
    (10, 0, "xsaveopt"),
    (10, 1, "xsavec"),
    (10, 2, "xgetbv1"),
    (11, 1, "avx512vbmi"),
    (11, 6, "avx512_vbmi2"),
    (11, 8, "gfni"),
    (11, 9, "vaes"),
    (11, 10, "vpclmulqdq"),
    (11, 11, "avx512_vnni"),
    (11, 12, "avx512_bitalg"),
    (11, 13, "tme"),
    (11, 14, "avx512_vpopcntdq"),
    (11, 22, "rdpid"),
    (13, 0, "clzero"),
    (18, 2, "avx512_4vnniw"),
    (18, 3, "avx512_4fmaps"),
];

/// Names of the xsave components 0..=9.
const XFEATURES: [&str; 10] = [
    "x87",
    "sse",
    "avx",
    "mpx_bndregs",
    "mpx_bndcsr",
    "avx512_opmask",
    "avx512_zmm_hi256",
    "avx512_hi16_zmm",
    "pt",
    "pkru",
];

/// The FPU features CRIU's `fpu` check requires: fpu, fxsr, osxsave, xsaves.
const FPU_FEATURES: [(usize, u32, &str); 4] = [
    (0, 0, "fpu"),
    (0, 24, "fxsr"),
    (4, 27, "osxsave"),
    (10, 3, "xsaves"),
];

/// The name of capability bit `w * 32 + b` (its /proc/cpuinfo flag when known).
fn feature_name(w: usize, b: u32) -> String {
    INS_FEATURES
        .iter()
        .chain(FPU_FEATURES.iter())
        .find(|f| f.0 == w && f.1 == b)
        .map(|f| f.2.to_string())
        .unwrap_or_else(|| format!("capability word {w} bit {b}"))
}

/// `cpuinfo.img`'s entry for CPU `c`.
pub fn entry(c: &CpuId) -> pb::CpuinfoEntry {
    use pb::cpuinfo_x86_entry::Vendor;
    let vendor = if c.vendor == "GenuineIntel" {
        Vendor::Intel
    } else {
        Vendor::Amd
    };
    pb::CpuinfoEntry {
        x86_entry: vec![pb::CpuinfoX86Entry {
            vendor_id: vendor as i32,
            cpu_family: c.family,
            model: c.model,
            stepping: c.stepping,
            capability_ver: CAPABILITY_VER,
            capability: c.caps.to_vec(),
            model_id: (!c.model_id.is_empty()).then(|| c.model_id.clone()),
            xfeatures_mask: Some(c.xfeatures_mask),
            xsave_size: Some(c.xsave_size),
            xsave_size_max: Some(c.xsave_size_max),
        }],
        ..Default::default()
    }
}

/// The CPU an image describes; what an old image lacks comes from `host` (as CRIU does).
pub fn from_entry(e: &pb::CpuinfoEntry, host: &CpuId) -> Result<CpuId, String> {
    let [x] = e.x86_entry.as_slice() else {
        return Err(format!("{} x86 entries, expected 1", e.x86_entry.len()));
    };
    let vendor = match x.vendor_id {
        1 => "GenuineIntel",
        2 => "AuthenticAMD",
        v => return Err(format!("unknown vendor {v}")),
    };
    let words = match x.capability_ver {
        1 => NCAPINTS_V1,
        2 => NCAPINTS,
        v => return Err(format!("unknown capability version {v}")),
    };
    if x.capability.len() != words {
        return Err(format!(
            "{} capability words, {words} expected for version {}",
            x.capability.len(),
            x.capability_ver
        ));
    }
    let mut caps = host.caps;
    caps[..words].copy_from_slice(&x.capability);
    Ok(CpuId {
        vendor: vendor.to_string(),
        family: x.cpu_family,
        model: x.model,
        stepping: x.stepping,
        caps,
        model_id: x.model_id.clone().unwrap_or_default(),
        xfeatures_mask: x.xfeatures_mask.unwrap_or(host.xfeatures_mask),
        xsave_size: x.xsave_size.unwrap_or(host.xsave_size),
        xsave_size_max: x.xsave_size_max.unwrap_or(host.xsave_size_max),
    })
}

/// What of `img` (the dump host) `host` lacks under `caps`; empty when the restore may go on.
pub fn missing(img: &CpuId, host: &CpuId, caps: u32) -> Vec<String> {
    let mut out = Vec::new();
    if caps & CAP_FPU != 0 {
        for (w, b, name) in FPU_FEATURES {
            if img.has(w, b) && !host.has(w, b) {
                out.push(name.to_string());
            }
        }
        let m = img.xfeatures_mask & !host.xfeatures_mask;
        for (i, name) in XFEATURES.iter().enumerate() {
            if m & (1 << i) != 0 {
                out.push(format!("xsave component {name}"));
            }
        }
        if img.xsave_size != host.xsave_size {
            out.push(format!(
                "xsave area of {} bytes (host: {})",
                img.xsave_size, host.xsave_size
            ));
        }
        if img.xsave_size_max != host.xsave_size_max {
            out.push(format!(
                "maximum xsave area of {} bytes (host: {})",
                img.xsave_size_max, host.xsave_size_max
            ));
        }
    }
    if caps & CAP_INS != 0 {
        for &(w, b, name) in INS_FEATURES {
            if img.has(w, b) && !host.has(w, b) && !out.iter().any(|n| n == name) {
                out.push(name.to_string());
            }
        }
    }
    if caps & CAP_CPU != 0 {
        for w in 0..NCAPINTS {
            let diff = img.caps[w] ^ host.caps[w];
            for b in (0..32).filter(|b| diff & (1 << b) != 0) {
                let name = feature_name(w, b);
                let what = if img.has(w, b) {
                    name
                } else {
                    format!(
                        "{name} (the host has it, the image does not: --cpu-cap=cpu wants equal)"
                    )
                };
                if !out.contains(&what) {
                    out.push(what);
                }
            }
        }
    }
    out
}

/// `CpuId` as a short description: vendor, family/model/stepping, brand.
fn describe(c: &CpuId) -> String {
    format!(
        "{} family {} model {} stepping {}{}",
        c.vendor,
        c.family,
        c.model,
        c.stepping,
        if c.model_id.is_empty() {
            String::new()
        } else {
            format!(", {}", c.model_id)
        }
    )
}

/// Writes `dir/cpuinfo.img` for this host (dump with `--cpu-cap`).
pub fn write(dir: &Path) -> Result<(), CpuinfoError> {
    let path = dir.join("cpuinfo.img");
    Image::from_messages(ImageKind::Cpuinfo, &[entry(&CpuId::host())])
        .write_file(&path)
        .map_err(|e| CpuinfoError::Image {
            path: path.display().to_string(),
            why: e.to_string(),
        })
}

/// Reads `dir/cpuinfo.img` and checks this host against it under `caps` (restore with
/// `--cpu-cap`; nothing to do without `CAP_IMAGE`).
pub fn check_dir(dir: &Path, caps: u32) -> Result<(), CpuinfoError> {
    if caps & CAP_IMAGE == 0 {
        return Ok(());
    }
    let path = dir.join("cpuinfo.img");
    let bad = |why: String| CpuinfoError::Image {
        path: path.display().to_string(),
        why,
    };
    let e: pb::CpuinfoEntry = read_single(&path).map_err(|e| bad(e.to_string()))?;
    let host = CpuId::host();
    let img = from_entry(&e, &host).map_err(bad)?;
    let missing = missing(&img, &host, caps);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CpuinfoError::Missing {
            host: describe(&host),
            image: describe(&img),
            missing: missing.join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_cap_values_as_criu_parses_them() {
        let p = |s: Option<&str>| parse_cpu_cap(s).unwrap();
        assert_eq!(p(None), CAP_ALL | CAP_IMAGE);
        assert_eq!(p(Some("fpu")), CAP_FPU | CAP_INS | CAP_IMAGE);
        assert_eq!(p(Some("cpu")), CAP_ALL | CAP_IMAGE);
        assert_eq!(p(Some("^ins")), CAP_FPU | CAP_IMAGE);
        assert_eq!(p(Some("^fpu,cpu")), CAP_INS | CAP_CPU | CAP_IMAGE);
        assert_eq!(p(Some("none")), 0);
        assert_eq!(p(Some("^none")), CAP_ALL | CAP_IMAGE);
        assert_eq!(p(Some("^all")), 0);
        assert!(parse_cpu_cap(Some("avx")).is_err());
    }

    #[test]
    fn host_round_trips_through_the_image_and_passes_its_own_check() {
        let host = CpuId::host();
        assert!(
            host.has(0, 0) && host.has(0, 25) && host.has(0, 26),
            "x86-64 has fpu, sse, sse2"
        );
        assert!(host.xfeatures_mask == 0 || host.xfeatures_mask & 1 != 0);
        let back = from_entry(&entry(&host), &host).unwrap();
        let mut expect = host.clone();
        if expect.vendor != "GenuineIntel" {
            expect.vendor = "AuthenticAMD".into();
        }
        assert_eq!(back, expect);
        assert!(missing(&back, &host, CAP_ALL).is_empty());
    }

    #[test]
    fn a_feature_the_host_lacks_is_named() {
        let host = CpuId::host();
        let mut img = host.clone();
        let &(w, b, name) = INS_FEATURES
            .iter()
            .find(|f| !host.has(f.0, f.1))
            .expect("some instruction extension this host lacks");
        img.caps[w] |= 1 << b;
        assert_eq!(missing(&img, &host, CAP_INS), vec![name.to_string()]);
        assert_eq!(missing(&img, &host, CAP_FPU), Vec::<String>::new());
        img.xfeatures_mask |= 1 << 7;
        img.xsave_size += 64;
        let m = missing(&img, &host, CAP_FPU | CAP_INS);
        if host.xfeatures_mask & (1 << 7) == 0 {
            assert!(
                m.contains(&"xsave component avx512_hi16_zmm".to_string()),
                "{m:?}"
            );
        }
        assert!(m.iter().any(|x| x.starts_with("xsave area of")), "{m:?}");
        assert!(m.contains(&name.to_string()), "{m:?}");
        // A host richer than the image passes the ins check, not the strict one.
        let mut poorer = host.clone();
        poorer.caps[0] &= !(1 << 26);
        assert!(missing(&poorer, &host, CAP_INS).is_empty());
        assert!(!missing(&poorer, &host, CAP_CPU).is_empty());
    }

    #[test]
    fn old_and_corrupt_images() {
        let host = CpuId::host();
        let mut e = entry(&host);
        e.x86_entry[0].capability.truncate(NCAPINTS_V1);
        assert!(from_entry(&e, &host)
            .unwrap_err()
            .contains("12 capability words"));
        e.x86_entry[0].capability_ver = 1;
        assert_eq!(from_entry(&e, &host).unwrap().caps, host.caps);
        e.x86_entry[0].vendor_id = 0;
        assert!(from_entry(&e, &host).unwrap_err().contains("vendor"));
        e.x86_entry.clear();
        assert!(from_entry(&e, &host).is_err());
    }
}
