// virsh commands as data, for the CLI only: the hook must never call libvirt (calls
// about the domain it is running for deadlock).
import type { Command } from './runner.js';

/** The libvirt connection: $LIBVIRT_DEFAULT_URI as virsh itself reads it, else the system daemon. */
export function libvirtUri(env: NodeJS.ProcessEnv): string {
  return env.LIBVIRT_DEFAULT_URI ?? 'qemu:///system';
}

/** `virsh -c URI ARGS…` */
export function virshCommand(uri: string, ...args: string[]): Command {
  return { file: 'virsh', args: ['-c', uri, ...args] };
}
