import { type FormEvent, useState } from "react";

export function KeyForm({ error, onKey }: { error: string | null; onKey(key: string): void }) {
  const [value, setValue] = useState("");
  const submit = (e: FormEvent) => {
    e.preventDefault();
    if (value.trim()) onKey(value.trim());
  };
  return (
    <main className="key-page">
      <h1>linkpulse</h1>
      <form className="key-form" onSubmit={submit} data-testid="key-form">
        <label htmlFor="api-key">API key or token</label>
        <input
          id="api-key"
          data-testid="key-input"
          type="password"
          autoComplete="off"
          value={value}
          onChange={(e) => setValue(e.target.value)}
          required
        />
        <button type="submit" data-testid="key-submit">
          Open dashboard
        </button>
        {error ? (
          <p className="error" role="alert" data-testid="key-error">
            {error}
          </p>
        ) : null}
        <p className="hint">
          The key stays in this tab only. Create one with <code>linkpulse keys create --role viewer</code>.
        </p>
      </form>
    </main>
  );
}
