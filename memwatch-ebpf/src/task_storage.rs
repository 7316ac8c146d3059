//! Task-local storage (BPF_MAP_TYPE_TASK_STORAGE, kernel 5.11+): a value per
//! thread, found through the task itself in O(1) and freed by the kernel when
//! the thread exits. aya-ebpf 0.2 has no wrapper, so this defines the BTF map
//! the way its own BTF maps are defined (the loader patches the fields).

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE, bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE},
    helpers::generated::{bpf_get_current_task_btf, bpf_task_storage_get},
};

#[repr(C)]
pub struct TaskStorage<T> {
    r#type: *const [i32; BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: placeholder pointers the loader patches; never dereferenced.
unsafe impl<T> Sync for TaskStorage<T> {}

impl<T> TaskStorage<T> {
    pub const fn new() -> Self {
        TaskStorage {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
        }
    }

    #[inline(always)]
    fn storage(&self, init: *mut T, flags: u64) -> Option<*mut T> {
        // SAFETY: the current task is a valid BTF pointer for the helper; the
        // map pointer is this map's definition.
        let p = unsafe {
            bpf_task_storage_get(
                core::ptr::from_ref(self).cast_mut().cast::<c_void>(),
                bpf_get_current_task_btf(),
                init.cast(),
                flags,
            )
        };
        (!p.is_null()).then_some(p.cast())
    }

    /// The current thread's value, if it has one.
    #[inline(always)]
    pub fn current(&self) -> Option<*mut T> {
        self.storage(core::ptr::null_mut(), 0)
    }

    /// Creates the current thread's value from `init`.
    #[inline(always)]
    pub fn create(&self, init: &mut T) -> Option<*mut T> {
        self.storage(init, BPF_LOCAL_STORAGE_GET_F_CREATE as u64)
    }
}
