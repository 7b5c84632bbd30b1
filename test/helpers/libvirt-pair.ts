// The two machines and the NAS of the end-to-end tests and benchmarks: simulated hosts
// `desk` and `laptop`, each with its own libvirtd (libvirt-host.ts), and a real sshd
// NAS behind the 1 Gbit link between them (ssh-nas.ts), all under one new directory.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LibvirtHost } from './libvirt-host.js';
import { startSshNas, type SshNas } from './ssh-nas.js';

export interface LibvirtPair {
  work: string;
  nas: SshNas;
  desk: LibvirtHost;
  laptop: LibvirtHost;
  /** Stops the hosts and the NAS and removes the directory. */
  stop: () => void;
}

/**
 * Starts both hosts and the NAS in a new directory named from `prefix`. `pool`: each
 * host gets the storage pool virt-manager makes (kss clone puts disks only in a pool's
 * directory, or --dir), at /var/lib/libvirt/images. `rate`: the NAS link's (ssh-nas.ts).
 */
export async function startLibvirtPair(prefix: string, { pool = false, rate }: { pool?: boolean; rate?: string } = {}): Promise<LibvirtPair> {
  const work = mkdtempSync(join(tmpdir(), prefix));
  const started: Array<{ stop: () => void }> = [];
  const stop = () => {
    for (const part of started.reverse()) part.stop();
    rmSync(work, { recursive: true, force: true });
  };
  try {
    const nas = await startSshNas({ rate });
    started.push(nas);
    const desk = await LibvirtHost.startWithSshNas('desk', join(work, 'desk'), nas);
    started.push(desk);
    const laptop = await LibvirtHost.startWithSshNas('laptop', join(work, 'laptop'), nas);
    started.push(laptop);
    if (pool) for (const host of [desk, laptop]) host.mustVirsh('pool-define-as', 'default', 'dir', '--target', '/var/lib/libvirt/images');
    return { work, nas, desk, laptop, stop };
  } catch (error) {
    stop();
    throw error;
  }
}
