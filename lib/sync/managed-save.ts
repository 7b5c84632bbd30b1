// libvirt's managed-save images (virsh managedsave): a saved VM's memory refers to its
// disks exactly as they were, so the stop before it and the restore after it must leave
// the disks alone. The hook never asks libvirt; it looks at the file.
import { stat } from 'node:fs/promises';
import { join } from 'node:path';

/** Where libvirt keeps managed-save images. */
export const MANAGED_SAVE_DIR = '/var/lib/libvirt/qemu/save';

/**
 * Which managed-save image the domain has now (device, inode, size, time), or
 * undefined when it has none. A restore is bound to the image it saw: a flag left by a
 * restore that failed must not pass for one when the image is gone or another.
 */
export async function managedSaveIdentity(domain: string, dir = MANAGED_SAVE_DIR): Promise<string | undefined> {
  try {
    const s = await stat(join(dir, `${domain}.save`));
    return `${s.dev}:${s.ino}:${s.size}:${s.mtimeMs}`;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
}
