/*
 * saga_def_hook.h — the allocation seam of saga_def.c, for tests only.
 *
 * Every allocation the loader makes itself goes through ferry__saga_malloc_
 * (malloc unless a test swaps it), so that a test can fail the Nth one and
 * check that loading then fails cleanly with FERRY_ENOMEM and no leak.
 * Payload templates are jansson values: set json_set_alloc_funcs() as well
 * to fail those. libyaml allocates with plain malloc and is not covered.
 * Not thread-safe, not exported from libferry.so.
 */
#ifndef FERRY_SAGA_DEF_HOOK_H
#define FERRY_SAGA_DEF_HOOK_H

#include <stddef.h>

extern void *(*ferry__saga_malloc_)(size_t size);

#endif
