/* The module's own memory: a bump allocator the host uses to place weights, activations and
   outputs, and reset between uses. The host (wasmtime natively, JavaScript in a browser) reads and
   writes the memory at the returned offsets. */
#include "cpu.h"

extern unsigned char __heap_base;
static uintptr_t top;

EXPORT(alloc) void *alloc(size_t bytes) {
    uintptr_t start = ((top ? top : (uintptr_t)&__heap_base) + 15) & ~(uintptr_t)15;
    uintptr_t end = start + bytes;
    size_t have = __builtin_wasm_memory_size(0) * 65536;
    if (end < start)
        return 0;
    if (end > have && __builtin_wasm_memory_grow(0, (end - have + 65535) / 65536) == (size_t)-1)
        return 0;
    top = end;
    return (void *)start;
}

/* Frees everything alloc handed out (the memory stays grown). */
EXPORT(reset) void reset(void) { top = 0; }

/* Frees what alloc handed out from `start` on: the host's scratch for a repack. */
EXPORT(release) void release(void *start) {
    if ((uintptr_t)start >= (uintptr_t)&__heap_base && (uintptr_t)start <= top)
        top = (uintptr_t)start;
}
