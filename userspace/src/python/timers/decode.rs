//! Which instruction touched a watched code unit: the x86-64 bytes before a data breakpoint's
//! trap told apart (the dispatch loop's plain load is a call; compares and stores are not).

/// Whether the x86-64 instruction ending at the end of `b` is a plain load from memory into a
/// register (`mov r8/r16/r32/r64, m`, `movzx`, `movsx`): how the interpreter's dispatch loop
/// fetches an instruction. Tried for every start 2-12 bytes back; a data breakpoint traps
/// after the accessing instruction, so it ends where the trap's instruction pointer is.
pub fn ends_with_plain_load(b: &[u8; 16]) -> bool {
    (2..=12).any(|k| plain_load_len(&b[16 - k..]) == Some(k))
}

fn plain_load_len(s: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < s.len() && s[i] == 0x66 {
        i += 1;
    }
    if i < s.len() && (0x40..=0x4f).contains(&s[i]) {
        i += 1; // REX
    }
    match *s.get(i)? {
        0x0f => match *s.get(i + 1)? {
            0xb6 | 0xb7 | 0xbe | 0xbf => i += 2,
            _ => return None,
        },
        0x8a | 0x8b => i += 1,
        _ => return None,
    }
    let modrm = *s.get(i)?;
    i += 1;
    let (md, rm) = (modrm >> 6, modrm & 7);
    if md == 3 {
        return None; // a register, not memory
    }
    if rm == 4 {
        let sib = *s.get(i)?;
        i += 1;
        if md == 0 && sib & 7 == 5 {
            i += 4;
        }
    } else if md == 0 && rm == 5 {
        i += 4; // RIP-relative
    }
    i += match md {
        1 => 1,
        2 => 4,
        _ => 0,
    };
    Some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ending(bytes: &[u8]) -> [u8; 16] {
        let mut b = [0x90u8; 16];
        b[16 - bytes.len()..].copy_from_slice(bytes);
        b
    }

    #[test]
    fn instruction_fetches_are_told_from_other_accesses() {
        // Seen in CPython 3.13's dispatch loop: movzwl (%rdi),%eax; movzwl 0xc8(%r13),%eax;
        // movzwl (%r15),%eax.
        assert!(ends_with_plain_load(&ending(&[0x0f, 0xb7, 0x07])));
        assert!(ends_with_plain_load(&ending(&[0x41, 0x0f, 0xb7, 0x85, 0xc8, 0, 0, 0])));
        assert!(ends_with_plain_load(&ending(&[0x41, 0x0f, 0xb7, 0x07])));
        // movzbl -0x2(%r15),%eax (3.12 loads the opcode byte alone).
        assert!(ends_with_plain_load(&ending(&[0x41, 0x0f, 0xb6, 0x47, 0xfe])));
        // 3.13's RESUME after an eval-breaker deopt: cmpb $0x95,-0x2(%r15).
        assert!(!ends_with_plain_load(&ending(&[0x41, 0x80, 0x7f, 0xfe, 0x95])));
        // A store of the opcode: movb $0xcf,-0x2(%r15).
        assert!(!ends_with_plain_load(&ending(&[0x41, 0xc6, 0x47, 0xfe, 0xcf])));
    }
}
