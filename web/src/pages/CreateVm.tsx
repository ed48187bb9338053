import { useState, type FormEvent } from 'react';
import { ApiError, describe } from '../api/client';
import { ErrorBanner } from '../components/common';
import { useRouter, vmPath } from '../router';
import { useSession } from '../session';

/** The images every node's catalog offers (shared/CONTRACT.md, guest images). */
export const CATALOG = { kernels: ['vmlinux.bin'], rootfs: ['rootfs.ext4'] };

export const SIZES = [
  { id: 'nano', label: 'nano: 1 vCPU, 128 MiB, 1 GiB', vcpu: 1, mem: 128, disk: 1 },
  { id: 'small', label: 'small: 1 vCPU, 256 MiB, 1 GiB', vcpu: 1, mem: 256, disk: 1 },
  { id: 'medium', label: 'medium: 2 vCPUs, 1 GiB, 4 GiB', vcpu: 2, mem: 1024, disk: 4 },
  { id: 'large', label: 'large: 4 vCPUs, 4 GiB, 16 GiB', vcpu: 4, mem: 4096, disk: 16 },
];

type Field = 'name' | 'owner' | 'vcpu_count' | 'mem_size_mib' | 'disk_size' | 'kernel' | 'rootfs' | 'boot_args';
const FIELDS: Field[] = ['vcpu_count', 'mem_size_mib', 'disk_size', 'boot_args', 'kernel', 'rootfs', 'owner', 'name'];

/** Which field an API error is about, when its message names one. */
export function fieldOf(message: string): Field | null {
  const named = FIELDS.find((f) => message.includes(f));
  if (named) return named;
  if (/wallet address|\bowner\b/i.test(message)) return 'owner';
  if (/\bVM name\b|\bname\b/i.test(message)) return 'name';
  if (/\bimage\b/i.test(message)) return 'kernel';
  return null;
}

export function CreateVm() {
  const { client, session } = useSession();
  const { navigate } = useRouter();
  const [name, setName] = useState('');
  const [owner, setOwner] = useState(session?.address ?? '');
  const [size, setSize] = useState('small');
  const [vcpu, setVcpu] = useState(1);
  const [mem, setMem] = useState(256);
  const [disk, setDisk] = useState(1);
  const [kernel, setKernel] = useState(CATALOG.kernels[0]);
  const [rootfs, setRootfs] = useState(CATALOG.rootfs[0]);
  const [bootArgs, setBootArgs] = useState('');
  const [boot, setBoot] = useState(true);
  const [busy, setBusy] = useState<string | null>(null);
  const [error, setError] = useState<{ message: string; field: Field | null } | null>(null);

  function pickSize(id: string) {
    setSize(id);
    const s = SIZES.find((x) => x.id === id);
    if (s) {
      setVcpu(s.vcpu);
      setMem(s.mem);
      setDisk(s.disk);
    }
  }

  async function submit(e: FormEvent) {
    e.preventDefault();
    setError(null);
    setBusy('Creating the VM…');
    try {
      const created = await client.createVm({
        name: name.trim(),
        owner: owner.trim(),
        vm_config: {
          vcpu_count: vcpu,
          mem_size_mib: mem,
          disk_size: disk,
          kernel,
          rootfs,
          ...(bootArgs.trim() ? { boot_args: bootArgs.trim() } : {}),
        },
      });
      if (boot) {
        setBusy('Booting the VM on a node (this can take a while)…');
        const booted = await client.boot(created.vm_id, owner.trim());
        setBusy(booted.message);
      }
      navigate(vmPath(owner.trim(), name.trim()));
    } catch (err) {
      const message = describe(err);
      setError({ message, field: err instanceof ApiError ? fieldOf(message) : null });
    } finally {
      setBusy(null);
    }
  }

  const invalid = (f: Field) => (error?.field === f ? 'invalid' : undefined);
  const inline = (f: Field) =>
    error?.field === f ? (
      <span className="field-error" role="alert" data-field-error={f}>
        {error.message}
      </span>
    ) : null;

  return (
    <main className="narrow">
      <h1>New virtual machine</h1>
      {error && !error.field && <ErrorBanner error={error.message} onDismiss={() => setError(null)} />}
      <form className="form" onSubmit={(e) => void submit(e)}>
        <label>
          Name
          <input name="name" className={invalid('name')} value={name} onChange={(e) => setName(e.target.value)} placeholder="my-vm" />
          {inline('name')}
        </label>
        <label>
          Owner (wallet)
          <input
            name="owner"
            className={`mono ${invalid('owner') ?? ''}`}
            value={owner}
            onChange={(e) => setOwner(e.target.value)}
            readOnly={session?.role !== 'admin' && session?.address !== null}
          />
          {inline('owner')}
        </label>
        <label>
          Size
          <select name="size" value={size} onChange={(e) => pickSize(e.target.value)}>
            {SIZES.map((s) => (
              <option key={s.id} value={s.id}>
                {s.label}
              </option>
            ))}
            <option value="custom">custom</option>
          </select>
        </label>
        <div className="row">
          <label>
            vCPUs
            <input name="vcpu_count" className={invalid('vcpu_count')} type="number" value={vcpu} onChange={(e) => (setSize('custom'), setVcpu(Number(e.target.value)))} />
            {inline('vcpu_count')}
          </label>
          <label>
            Memory (MiB)
            <input name="mem_size_mib" className={invalid('mem_size_mib')} type="number" value={mem} onChange={(e) => (setSize('custom'), setMem(Number(e.target.value)))} />
            {inline('mem_size_mib')}
          </label>
          <label>
            Disk (GiB)
            <input name="disk_size" className={invalid('disk_size')} type="number" value={disk} onChange={(e) => (setSize('custom'), setDisk(Number(e.target.value)))} />
            {inline('disk_size')}
          </label>
        </div>
        <div className="row">
          <label>
            Kernel image
            <select name="kernel" value={kernel} onChange={(e) => setKernel(e.target.value)}>
              {CATALOG.kernels.map((k) => (
                <option key={k}>{k}</option>
              ))}
            </select>
            {inline('kernel')}
          </label>
          <label>
            Root filesystem image
            <select name="rootfs" value={rootfs} onChange={(e) => setRootfs(e.target.value)}>
              {CATALOG.rootfs.map((k) => (
                <option key={k}>{k}</option>
              ))}
            </select>
            {inline('rootfs')}
          </label>
        </div>
        <label>
          Extra kernel arguments (optional)
          <input name="boot_args" className={invalid('boot_args')} value={bootArgs} onChange={(e) => setBootArgs(e.target.value)} />
          {inline('boot_args')}
        </label>
        <label className="check">
          <input type="checkbox" checked={boot} onChange={(e) => setBoot(e.target.checked)} /> Boot it now
        </label>
        <button type="submit" className="primary" disabled={busy !== null}>
          Create
        </button>
        {busy && <p className="progress">{busy}</p>}
      </form>
    </main>
  );
}
