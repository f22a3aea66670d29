/*
 * tlb.c - fast-memory mode: Unicorn's virtual TLB filled by a small C hook.
 *
 * In 2.1.4 every guest store takes a slow path with the default CPU TLB;
 * UC_TLB_VIRTUAL with an identity fill hook made store- and call-heavy code
 * several times faster (measured), while self-modifying-code
 * detection and faults keep working. The page permissions are the region's.
 */
#include "core.h"

/* The prot bit an access of this type needs (UC_PROT_*). */
static int needs(uc_mem_type type)
{
    return type == UC_MEM_WRITE ? UC_PROT_WRITE : type == UC_MEM_FETCH ? UC_PROT_EXEC : UC_PROT_READ;
}

/* Fills the entry, or reports the fault and refuses: in this mode the fill
 * is where an access to unmapped or protected memory is seen (there is no
 * UC_HOOK_MEM_INVALID hook: one would send every store down the slow path). */
static bool hook_tlb_fill(uc_engine *uc, uint64_t vaddr, uc_mem_type type,
                          uc_tlb_entry *result, void *ud)
{
    struct emu_core *c = ud;
    struct emu_region *r = __emu_region_of(c, vaddr & ~0xfffULL, 1);
    int kind = 0;

    if (!r)
        kind = type == UC_MEM_WRITE ? EMU_FAULT_UNMAPPED_WRITE
             : type == UC_MEM_FETCH ? EMU_FAULT_UNMAPPED_FETCH
             : EMU_FAULT_UNMAPPED_READ;
    else if (!(r->prot & needs(type)))
        kind = type == UC_MEM_WRITE ? EMU_FAULT_PROT_WRITE
             : type == UC_MEM_FETCH ? EMU_FAULT_PROT_FETCH
             : EMU_FAULT_PROT_READ;
    if (kind) {
        uint64_t rip = 0;
        uc_reg_read(uc, UC_X86_REG_RIP, &rip);
        /* Execution reaching address 0 is what emu_run's `until` of 0 stops
         * with the CPU TLB; here the fetch's fill comes first. Same report. */
        if (kind == EMU_FAULT_UNMAPPED_FETCH && rip == 0)
            kind = EMU_FAULT_NULL_CALL;
        __emu_fault(c, kind, rip, kind == EMU_FAULT_NULL_CALL ? 0 : vaddr, 0);
        return false;
    }
    result->paddr = vaddr & ~0xfffULL;
    result->perms = (uc_prot)r->prot;
    return true;
}

int __emu_tlb_install(struct emu_core *c)
{
    uc_err err = uc_ctl_tlb_mode(c->uc, UC_TLB_VIRTUAL);

    if (!err)
        err = uc_hook_add(c->uc, &c->h_tlb, UC_HOOK_TLB_FILL, (void *)hook_tlb_fill, c, 1, 0);
    if (err) {
        c->last_err = err;
        return EMU_EUC;
    }
    return EMU_OK;
}
