// Which face the one executable shows: the libvirt hook or the CLI. Pure.
import { basename, dirname } from 'node:path';

export type Face = { face: 'hook'; hookArgs: string[] } | { face: 'cli'; args: string[] };

/**
 * `invokedAs` is the program name as started (argv[1] in a single executable, which
 * keeps a symlink's own name). The hook face is chosen when the program is called
 * `qemu` (libvirt's /etc/libvirt/hooks/qemu), or sits in a `qemu.d` directory (a hook
 * beside another program's qemu hook), or is run as `kvm-snapshot-sync hook qemu …`.
 */
export function chooseFace(invokedAs: string, args: string[]): Face {
  if (basename(invokedAs) === 'qemu' || basename(dirname(invokedAs)) === 'qemu.d') {
    return { face: 'hook', hookArgs: args };
  }
  if (args[0] === 'hook' && args[1] === 'qemu') return { face: 'hook', hookArgs: args.slice(2) };
  return { face: 'cli', args };
}
