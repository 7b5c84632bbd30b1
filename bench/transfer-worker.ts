// One push or pull through the repository, in its own process so that its time and
// peak memory can be measured (bench/transfer.ts bundles it and runs it on the pinned
// Node). Usage: transfer-worker JSON {op, target, root, domain, file|dir, hash, size}
import { NasRepository } from '../lib/nas/repository.js';
import { SshTransport } from '../lib/nas/ssh-transport.js';

const job = JSON.parse(process.argv[2] as string) as {
  op: 'push' | 'pull';
  target: ConstructorParameters<typeof SshTransport>[0]['target'];
  root: string;
  domain: string;
  file: string;
  dir: string;
  hash: string;
  /** The layer's size (a standalone image: no parent). */
  size: number;
};
const repository = new NasRepository(new SshTransport({ target: job.target, root: job.root, opTimeoutMs: 30_000, stallTimeoutMs: 30_000, compress: true }), { host: 'bench' });
if (job.op === 'push') await repository.pushLayer(job.domain, job.file, job.hash);
else await repository.pullLayer(job.domain, job.hash, { parent: null, size: job.size }, job.dir);
await repository.close();
