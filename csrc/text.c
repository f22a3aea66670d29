/*
 * text.c - the one way to change guest code.
 *
 * Unicorn does not drop translated code when memory changes under it
 * (uc_mem_write and host-mapped stores alike), so stale code would keep
 * running; every write to text goes through here and removes the cached
 * translations of the range it wrote.
 */
#include <string.h>
#include "core.h"

int emu_text_write(struct emu_core *c, uint64_t addr, const uint8_t *data, size_t len)
{
    uint8_t *p;
    uc_err err;

    if (!c || !data || !len || addr + len < addr || c->stop)
        return EMU_EINVAL;
    p = __emu_ptr(c, addr, len);
    if (p) {
        memcpy(p, data, len);
    } else {
        err = uc_mem_write(c->uc, addr, data, len);
        if (err) {
            c->last_err = err;
            return EMU_EUC;
        }
    }
    err = uc_ctl_remove_cache(c->uc, addr, addr + len);
    if (err) {
        c->last_err = err;
        return EMU_EUC;
    }
    /* an enabled site needs no watch, a site that is not needs one */
    return __emu_sites_written(c, addr, len);
}
