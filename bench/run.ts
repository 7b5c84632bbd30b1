// `npm run bench [-- startup|transfer|lifecycle|chain|year|whole-vm|precopy ...]`: benchmarks (not timed tests)
// that print tables of medians and ratios to baselines measured in the same run.
import { benchChain } from './chain.js';
import { benchLifecycle } from './lifecycle.js';
import { benchPrecopy } from './precopy.js';
import { benchStartup } from './startup.js';
import { benchTransfer } from './transfer.js';
import { benchWholeVm } from './whole-vm.js';
import { benchYear } from './year.js';

const benches: Record<string, () => void | Promise<void>> = { startup: benchStartup, transfer: benchTransfer, lifecycle: benchLifecycle, chain: benchChain, year: benchYear, 'whole-vm': benchWholeVm, precopy: benchPrecopy };
// lifecycle (real libvirtd, ~10 min), chain, year (a simulated year of sessions) and whole-vm
// (UEFI and TPM state on real libvirtd, ~3 min) and precopy (checkpoints while the VM runs,
// real libvirtd, ~20 min) run when named.
const chosen = process.argv.slice(2);
for (const name of chosen.length > 0 ? chosen : ['startup', 'transfer']) {
  const bench = benches[name];
  if (!bench) throw new Error(`unknown benchmark "${name}"; there are: ${Object.keys(benches).join(', ')}`);
  await bench();
}
