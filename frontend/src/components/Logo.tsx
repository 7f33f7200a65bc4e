export function Logo({ size = 28 }: { size?: number }) {
  return (
    <svg width={size} height={size} viewBox="0 0 32 32" aria-hidden focusable="false" className="logo">
      <defs>
        <linearGradient id="lg" x1="0" y1="0" x2="1" y2="1">
          <stop offset="0" stopColor="var(--violet-9)" />
          <stop offset="1" stopColor="var(--iris-10)" />
        </linearGradient>
      </defs>
      <rect width="32" height="32" rx="8" fill="url(#lg)" />
      <path d="M11 11c5 0 5 10 10 10" fill="none" stroke="#fff" strokeWidth="2.2" strokeLinecap="round" />
      <rect x="5" y="7" width="8" height="8" rx="2.5" fill="#fff" />
      <rect x="19" y="17" width="8" height="8" rx="2.5" fill="#fff" />
    </svg>
  );
}
