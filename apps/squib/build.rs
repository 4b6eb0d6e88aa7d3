//! Compiles squib's seccomp filters (`src/seccomp/syscalls.rs`) to BPF at build time, so that
//! squib installs them at start-up without building them first.

use std::fmt::Write;

#[path = "src/seccomp/syscalls.rs"]
#[allow(dead_code)]
mod syscalls;

fn main() {
    println!("cargo::rerun-if-changed=src/seccomp/syscalls.rs");
    let mut out = String::new();
    for kind in syscalls::ThreadKind::ALL {
        let program = syscalls::compile(kind)
            .unwrap_or_else(|e| panic!("the {} seccomp filter: {e}", kind.name()));
        let _ = writeln!(
            out,
            "pub(super) static {}: &[sock_filter] = &[",
            kind.name().to_uppercase()
        );
        for insn in program {
            let _ = writeln!(
                out,
                "    sock_filter {{ code: {:#x}, jt: {}, jf: {}, k: {:#x} }},",
                insn.code, insn.jt, insn.jf, insn.k
            );
        }
        out.push_str("];\n");
    }
    let dir = std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR");
    std::fs::write(std::path::Path::new(&dir).join("seccomp_filters.rs"), out)
        .expect("cannot write the compiled seccomp filters");
}
