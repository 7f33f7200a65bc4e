import { Callout, Code, Flex, Text } from "@radix-ui/themes";
import { ExclamationTriangleIcon } from "@radix-ui/react-icons";
import { ApiError } from "../api/client";

export function ErrorCallout({ error, title }: { error: unknown; title?: string }) {
  if (!error) return null;
  const e = error instanceof ApiError ? error : null;
  const message = error instanceof Error ? error.message : String(error);
  return (
    <Callout.Root color="red" role="alert" className="error-callout" data-code={e?.code}>
      <Callout.Icon>
        <ExclamationTriangleIcon />
      </Callout.Icon>
      <Flex direction="column" gap="1">
        <Callout.Text weight="medium">
          {title ?? "Something went wrong"}
          {e && (
            <>
              {" "}
              <Code size="1" variant="soft" color="red">
                {e.code}
              </Code>
              {e.status > 0 && (
                <Text size="1" color="gray">
                  {" "}
                  HTTP {e.status}
                </Text>
              )}
            </>
          )}
        </Callout.Text>
        <Callout.Text size="2">{message}</Callout.Text>
      </Flex>
    </Callout.Root>
  );
}
