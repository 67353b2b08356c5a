"""A KVM guest that keeps writing memory: a boot sector (our own, assembled at run time
with binutils) that switches to 32-bit protected mode, zeroes [START, END), prints 'A' on
the serial port, and then, pass after pass, increments the first byte of every 4 KiB page
in [START, END) (spinning DELAY iterations after each), printing 'B' every 2**SHIFT
passes. At any instant the first bytes read v+1 up to the page being written and v after
it (mod 256), and every other byte of the range is 0: `check_memory` verifies exactly that
on a memory dump.
"""

import os
import subprocess
import tempfile

MiB = 1 << 20
START = 1 * MiB

ASM = r"""
.code16
.globl _start
_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    lgdtl gdtdesc
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $8, $pmode
.code32
pmode:
    mov $16, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    inb $0x92, %al
    or $2, %al
    outb %al, $0x92
    mov $START, %edi
    mov $((END - START) / 4), %ecx
    xor %eax, %eax
    cld
    rep stosl
    mov $0x3f8, %dx
    mov $65, %al
    outb %al, %dx
    xor %ebx, %ebx
pass:
    mov $START, %eax
page:
    incb (%eax)
    mov $DELAY, %ecx
spin:
    dec %ecx
    jnz spin
    add $4096, %eax
    cmp $END, %eax
    jb page
    inc %ebx
    test $MASK, %ebx
    jnz pass
    mov $0x3f8, %dx
    mov $66, %al
    outb %al, %dx
    jmp pass
.p2align 3
gdt:
    .quad 0
    .quad 0x00cf9a000000ffff
    .quad 0x00cf92000000ffff
gdtdesc:
    .word gdtdesc - gdt - 1
    .long gdt
.org 510
    .byte 0x55, 0xaa
"""


def build_bootsector(path, end, shift, delay=1):
    """Writes a 512-byte boot disk image to `path` for a guest writing [1 MiB, end),
    spinning `delay` iterations after each page (1: none to speak of)."""
    src = ASM.replace("START", str(START)).replace("END", str(end)).replace(
        "MASK", str((1 << shift) - 1)).replace("DELAY", str(max(1, delay)))
    with tempfile.TemporaryDirectory() as d:
        s, o, b = (os.path.join(d, n) for n in ("boot.S", "boot.o", "boot.bin"))
        with open(s, "w") as f:
            f.write(src)
        subprocess.run(["as", "--32", "-o", o, s], check=True)
        subprocess.run(["ld", "-m", "elf_i386", "-Ttext=0x7c00", "--oformat=binary",
                        "-e", "_start", "-o", b, o], check=True)
        data = open(b, "rb").read()
    if len(data) != 512 or data[510:] != b"\x55\xaa":
        raise RuntimeError("boot sector is %d bytes" % len(data))
    with open(path, "wb") as f:
        f.write(data)


def check_memory(dump, start, end):
    """Checks a dump of guest memory [start, end) against the pattern. Returns a short
    description, raises AssertionError at the first bad byte otherwise."""
    with open(dump, "rb") as f:
        mem = bytearray(f.read())
    assert len(mem) == end - start, "dump is %d bytes, wanted %d" % (len(mem), end - start)
    firsts = bytes(mem[::4096])
    # Every byte but the first of each page is zero.
    mem[::4096] = bytes(len(firsts))
    if any(mem):
        bad = next(i for i, b in enumerate(mem) if b)
        raise AssertionError("byte at guest address 0x%x is 0x%02x" % (start + bad, mem[bad]))
    v_first, v_last = firsts[0], firsts[-1]
    # Values step down by at most one, once: v+1 ... v+1, v ... v.
    steps = 0
    for i in range(1, len(firsts)):
        a, b = firsts[i - 1], firsts[i]
        if a == b:
            continue
        if (a - b) % 256 == 1 and steps == 0:
            steps = 1
            continue
        raise AssertionError("page at 0x%x holds %d after %d" % (start + i * 4096, b, a))
    if steps == 0 and v_first != v_last:
        raise AssertionError("inconsistent pattern")
    return "%d pages checked, counters %d/%d, %d step(s)" % (len(firsts), v_first, v_last,
                                                              steps)
